//! Configuration: the TOML file an operator writes, validated once at start.
//!
//! Every section rejects unknown keys, and every invalid value is reported with the key that
//! holds it, so a typo fails loudly at start instead of silently running with a default.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is present but not usable.
    #[error("invalid config value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key path, e.g. `accounts[1].base_url`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A TOML error as "line L, column C: message", without the offending line and with every
/// quoted value elided: the line or the value may be a key (`api_key = "sk-…"`), and config
/// errors are printed to terminals and logs.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let mut message = String::with_capacity(e.message().len());
    let mut quoted = false;
    for c in e.message().trim_end().chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                message.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                message.push('"');
            }
            (c, false) => message.push(c),
            (_, true) => {}
        }
    }
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return message;
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A secret value (an API key). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole configuration, as loaded and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listener, shards and client-facing limits.
    pub server: ServerConfig,
    /// Upstream dialing, pooling and timeouts.
    pub upstream: UpstreamConfig,
    /// Keys clients authenticate with.
    pub client_keys: Vec<ClientKey>,
    /// Upstream accounts sessions are spread over.
    pub accounts: Vec<Account>,
    /// Logging.
    pub log: LogConfig,
    /// Sticky state (response bindings, session chains, pending calls).
    pub state: StateConfig,
    /// Usage records (billing).
    pub usage: UsageConfig,
}

/// `[server]`: the client-facing side.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address every shard binds with `SO_REUSEPORT`.
    pub listen: SocketAddr,
    /// Number of shards (one per CPU of the affinity mask by default).
    pub shards: usize,
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

/// `[upstream]`: how the gateway talks to the accounts.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// TCP connect deadline.
    pub dial_timeout: Duration,
    /// TLS + WebSocket handshake deadline.
    pub handshake_timeout: Duration,
    /// Longest silence from upstream while a turn is in flight.
    pub event_timeout: Duration,
    /// Connections older than this are retired before their next turn (upstream ends them at 60 min).
    pub max_conn_age: Duration,
    /// Waiters allowed per connection of a slice when its budget is used up.
    pub queue_per_conn: usize,
    /// Longest wait for a connection from a full slice.
    pub acquire_timeout: Duration,
    /// Largest WebSocket message accepted from upstream.
    pub max_message_bytes: usize,
    /// Send every account's requests over HTTP/SSE (rollback switch).
    pub force_http: bool,
    /// Retry policy for retryable upstream failures.
    pub retry: RetryConfig,
    /// Per-account-slice circuit breaker.
    pub breaker: BreakerConfig,
}

/// `[upstream]` retry keys: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// Backoff before the second attempt (upper bound of the jitter).
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
}

/// `[upstream]` breaker keys.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens it (with at least `min_requests` requests seen).
    pub failure_rate: f64,
    /// Window the failure share is measured over.
    pub window: Duration,
    /// Requests the window needs before the rate counts.
    pub min_requests: u32,
    /// How long an open breaker stays open before one probe is let through.
    pub cooldown: Duration,
}

/// Where sticky state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In the control thread's memory: one host, nothing to install.
    Embedded,
    /// In Redis, shared by every gateway host.
    Redis,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// Which store.
    pub backend: StateBackend,
    /// Redis URL (used when `backend = "redis"`, and by the Redis usage sink by default).
    pub redis_url: Option<Secret>,
    /// Lifetime of a binding (a response lives upstream about this long).
    pub ttl: Duration,
    /// Timeout of one Redis call.
    pub redis_timeout: Duration,
    /// This host's name in bindings (defaults to the hostname).
    pub instance: String,
    /// Namespace of every store key (`{prefix}:{group}:resp:{id}`); hosts sharing state share it.
    pub key_prefix: String,
}

/// Where usage records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSinkKind {
    /// Append-only JSONL file.
    File,
    /// A Redis stream.
    Redis,
}

/// `[usage]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageConfig {
    /// Which sink.
    pub sink: UsageSinkKind,
    /// JSONL file for `sink = "file"` (required then; empty when the Redis sink has none).
    pub path: PathBuf,
    /// Rotate the file when it grows past this many bytes.
    pub rotate_bytes: u64,
    /// Longest time a written record waits for its fsync.
    pub fsync_interval: Duration,
    /// Redis URL for `sink = "redis"` (defaults to `[state] redis_url`).
    pub redis_url: Option<Secret>,
    /// Stream key for `sink = "redis"`.
    pub stream: String,
    /// Directory of the on-disk spool used while the sink is down (default: `usage-spool` next
    /// to `path`).
    pub spool_dir: PathBuf,
    /// Largest spool size; past it the oldest spooled records are kept and new ones counted as dropped.
    pub spool_max_bytes: u64,
}

/// `[[client_keys]]`: one key a client may present.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientKey {
    /// A name for the key that is safe to log and bill by.
    pub id: String,
    /// The key itself.
    pub key: Secret,
    /// The group whose accounts and state the key may use.
    pub group: String,
}

/// How requests for an account travel upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket mode (default).
    Ws,
    /// HTTP/SSE.
    Http,
}

/// `[[accounts]]`: one upstream account.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// Stable name, used in logs, stats and usage records.
    pub id: String,
    /// The client group it serves.
    pub group: String,
    /// Parsed `base_url`.
    pub endpoint: Endpoint,
    /// The account's API key.
    pub api_key: Secret,
    /// Upstream connection budget for the whole process, split over the shards.
    pub max_conns: usize,
    /// Extra trusted root certificates (PEM), for upstreams with a private CA.
    pub ca_file: Option<PathBuf>,
    /// How requests travel upstream.
    pub transport: Transport,
    /// Client model → upstream model.
    pub model_map: HashMap<String, String>,
    /// Models it serves under their own name, listed by `GET /v1/models` (with the client-side
    /// names of `model_map`).
    pub models: Vec<String>,
    /// How the account authenticates (`api_key` by default). Only kinds known to support
    /// WebSocket mode use it; any other kind goes over HTTP/SSE.
    pub auth: String,
}

/// The account auth kinds known to support the Responses WebSocket mode.
pub const WS_AUTH_KINDS: &[&str] = &["api_key"];

impl Account {
    /// `true` when the account's auth kind is known to support WebSocket mode.
    pub fn auth_supports_ws(&self) -> bool {
        WS_AUTH_KINDS.contains(&self.auth.as_str())
    }
}

/// An upstream base URL, split into what dialing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `true` for https/wss.
    pub tls: bool,
    /// Host name or address literal (no brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1`.
    pub path: String,
}

impl Endpoint {
    /// Parses `http(s)://host[:port][/path]` (or `ws(s)://`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err("must start with https://, http://, wss:// or ws://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err("has no host".into());
        }
        if authority.contains('@') {
            return Err("must not carry credentials".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or("has an unclosed IPv6 bracket")?;
            let host = &v6[..end];
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or("has an invalid port")?,
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err("has an invalid IPv6 address".into());
            }
            (host.to_string(), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| "has an invalid port")?),
                None => (authority, default_port),
            };
            // A name or an IPv4 address: anything else (an IPv6 address without brackets, a
            // space, a quote) would not survive into the Host header and the URLs built from it.
            if host.is_empty() || !host.bytes().all(is_host_byte) {
                return Err("has an invalid host".into());
            }
            (host.to_string(), port)
        };
        if path.contains(['?', '#']) {
            return Err("must not carry a query or fragment".into());
        }
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("has a path with spaces or control characters".into());
        }
        Ok(Endpoint {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The WebSocket URL of the Responses endpoint.
    pub fn responses_ws_url(&self) -> String {
        self.ws_url("responses")
    }

    /// The WebSocket URL of the Realtime endpoint (without its query).
    pub fn realtime_ws_url(&self) -> String {
        self.ws_url("realtime")
    }

    fn ws_url(&self, resource: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}/{resource}", self.authority(), self.path)
    }
}

/// A byte of a host name or IPv4 address (RFC 3986 reg-name, without percent-encoding).
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `[log]`: log format and level.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Emit JSON lines instead of text.
    pub json: bool,
    /// Default filter when `RUST_LOG` is not set.
    pub level: String,
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    client_keys: Vec<RawClientKey>,
    #[serde(default)]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    usage: RawUsage,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    shards: Option<usize>,
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    dial_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    event_timeout_secs: Option<f64>,
    max_conn_age_secs: Option<f64>,
    queue_per_conn: Option<usize>,
    acquire_timeout_ms: Option<u64>,
    max_message_bytes: Option<usize>,
    force_http: Option<bool>,
    retry_max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_cap_ms: Option<u64>,
    breaker_failures: Option<u32>,
    breaker_failure_rate: Option<f64>,
    breaker_window_secs: Option<f64>,
    breaker_min_requests: Option<u32>,
    breaker_cooldown_secs: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    backend: Option<StateBackend>,
    redis_url: Option<String>,
    redis_url_env: Option<String>,
    ttl_secs: Option<f64>,
    redis_timeout_ms: Option<u64>,
    instance: Option<String>,
    key_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    sink: Option<UsageSinkKind>,
    path: Option<PathBuf>,
    rotate_bytes: Option<u64>,
    fsync_interval_ms: Option<u64>,
    redis_url: Option<String>,
    redis_url_env: Option<String>,
    stream: Option<String>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientKey {
    id: Option<String>,
    key: Option<String>,
    key_env: Option<String>,
    group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    id: String,
    group: Option<String>,
    base_url: Option<String>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    max_conns: Option<usize>,
    ca_file: Option<PathBuf>,
    transport: Option<Transport>,
    #[serde(default)]
    model_map: HashMap<String, String>,
    #[serde(default)]
    models: Vec<String>,
    auth: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

/// Default message limit in both directions: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Longest duration a `*_secs` setting takes (about 31 years): far beyond any useful timeout,
/// and far from where `Duration` or a deadline (`Instant` plus the setting) overflows.
const MAX_SECS: f64 = 1e9;

fn secs(key: &str, v: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if !(v > 0.0 && v <= MAX_SECS) {
        return Err(invalid(
            key,
            "must be a positive number of seconds, at most 1e9",
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn millis(key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match v.unwrap_or(default) {
        0 => Err(invalid(key, "must be greater than 0")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

fn secret(
    key_path: &str,
    inline: Option<String>,
    env_path: &str,
    env: Option<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(invalid(
            key_path,
            format!("set either it or `{env_path}`, not both"),
        )),
        (Some(v), None) if v.is_empty() => Err(invalid(key_path, "must not be empty")),
        (Some(v), None) => Ok(Secret(v)),
        (None, Some(name)) => match lookup(&name) {
            Some(v) if !v.is_empty() => Ok(Secret(v)),
            _ => Err(invalid(
                env_path,
                format!("environment variable {name} is not set or empty"),
            )),
        },
        (None, None) => Err(invalid(key_path, format!("required (or `{env_path}`)"))),
    }
}

fn optional_secret(
    key_path: &str,
    inline: Option<String>,
    env_path: &str,
    env: Option<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    if inline.is_none() && env.is_none() {
        return Ok(None);
    }
    secret(key_path, inline, env_path, env, lookup).map(Some)
}

fn default_instance() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shardgate".into())
}

impl Config {
    /// Reads and validates a config file, taking `*_env` secrets from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` resolves `*_env` names (injectable for tests).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(describe(text, &e)))?;
        Self::validate(raw, env)
    }

    fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let s = raw.server;
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
        };

        let u = raw.upstream;
        let queue_per_conn = u.queue_per_conn.unwrap_or(16);
        let upstream = UpstreamConfig {
            dial_timeout: millis("upstream.dial_timeout_ms", u.dial_timeout_ms, 10_000)?,
            handshake_timeout: millis(
                "upstream.handshake_timeout_ms",
                u.handshake_timeout_ms,
                10_000,
            )?,
            event_timeout: secs("upstream.event_timeout_secs", u.event_timeout_secs, 600.0)?,
            max_conn_age: secs(
                "upstream.max_conn_age_secs",
                u.max_conn_age_secs,
                55.0 * 60.0,
            )?,
            queue_per_conn,
            acquire_timeout: millis("upstream.acquire_timeout_ms", u.acquire_timeout_ms, 30_000)?,
            max_message_bytes: u.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            force_http: u.force_http.unwrap_or(false),
            retry: RetryConfig {
                max_attempts: match u.retry_max_attempts.unwrap_or(3) {
                    0 => return Err(invalid("upstream.retry_max_attempts", "must be at least 1")),
                    n => n,
                },
                base: millis("upstream.retry_base_ms", u.retry_base_ms, 100)?,
                cap: millis("upstream.retry_cap_ms", u.retry_cap_ms, 2_000)?,
            },
            breaker: BreakerConfig {
                consecutive_failures: match u.breaker_failures.unwrap_or(5) {
                    0 => return Err(invalid("upstream.breaker_failures", "must be at least 1")),
                    n => n,
                },
                failure_rate: match u.breaker_failure_rate.unwrap_or(0.5) {
                    r if r > 0.0 && r <= 1.0 => r,
                    _ => {
                        return Err(invalid(
                            "upstream.breaker_failure_rate",
                            "must be in (0, 1]",
                        ))
                    }
                },
                window: secs("upstream.breaker_window_secs", u.breaker_window_secs, 10.0)?,
                min_requests: u.breaker_min_requests.unwrap_or(20),
                cooldown: secs(
                    "upstream.breaker_cooldown_secs",
                    u.breaker_cooldown_secs,
                    30.0,
                )?,
            },
        };
        if upstream.retry.cap < upstream.retry.base {
            return Err(invalid(
                "upstream.retry_cap_ms",
                "must not be below upstream.retry_base_ms",
            ));
        }
        if upstream.max_conn_age > Duration::from_secs(3600) {
            return Err(invalid(
                "upstream.max_conn_age_secs",
                "must be below 3600: upstream ends connections at 60 minutes",
            ));
        }

        let mut client_keys = Vec::with_capacity(raw.client_keys.len());
        for (i, k) in raw.client_keys.into_iter().enumerate() {
            let at = format!("client_keys[{i}]");
            let key = secret(
                &format!("{at}.key"),
                k.key,
                &format!("{at}.key_env"),
                k.key_env,
                env,
            )?;
            if client_keys.iter().any(|c: &ClientKey| c.key == key) {
                return Err(invalid(format!("{at}.key"), "duplicates an earlier key"));
            }
            let id = k.id.unwrap_or_else(|| format!("key-{i}"));
            if client_keys.iter().any(|c: &ClientKey| c.id == id) {
                return Err(invalid(format!("{at}.id"), format!("`{id}` is used twice")));
            }
            client_keys.push(ClientKey {
                id,
                key,
                group: k.group.unwrap_or_else(|| "default".into()),
            });
        }
        if client_keys.is_empty() {
            return Err(invalid(
                "client_keys",
                "at least one client key is required",
            ));
        }

        let mut accounts: Vec<Account> = Vec::with_capacity(raw.accounts.len());
        for (i, a) in raw.accounts.into_iter().enumerate() {
            let at = format!("accounts[{i}]");
            if a.id.is_empty() || accounts.iter().any(|x| x.id == a.id) {
                return Err(invalid(format!("{at}.id"), "must be non-empty and unique"));
            }
            let base_url = a
                .base_url
                .unwrap_or_else(|| "https://api.openai.com/v1".into());
            let endpoint =
                Endpoint::parse(&base_url).map_err(|r| invalid(format!("{at}.base_url"), r))?;
            let api_key = secret(
                &format!("{at}.api_key"),
                a.api_key,
                &format!("{at}.api_key_env"),
                a.api_key_env,
                env,
            )?;
            let max_conns = a.max_conns.unwrap_or(64);
            if max_conns == 0 {
                return Err(invalid(format!("{at}.max_conns"), "must be at least 1"));
            }
            if let Some(ca) = &a.ca_file {
                if !ca.is_file() {
                    return Err(invalid(
                        format!("{at}.ca_file"),
                        format!("{} is not a readable file", ca.display()),
                    ));
                }
            }
            accounts.push(Account {
                id: a.id,
                group: a.group.unwrap_or_else(|| "default".into()),
                endpoint,
                api_key,
                max_conns,
                ca_file: a.ca_file,
                transport: a.transport.unwrap_or(Transport::Ws),
                model_map: a.model_map,
                models: a.models,
                auth: match a.auth {
                    Some(kind) if kind.trim().is_empty() => {
                        return Err(invalid(format!("{at}.auth"), "must not be empty"))
                    }
                    Some(kind) => kind,
                    None => "api_key".into(),
                },
            });
        }
        if accounts.is_empty() {
            return Err(invalid("accounts", "at least one account is required"));
        }
        for (i, k) in client_keys.iter().enumerate() {
            if !accounts.iter().any(|a| a.group == k.group) {
                return Err(invalid(
                    format!("client_keys[{i}].group"),
                    format!("no account serves group `{}`", k.group),
                ));
            }
        }

        let log = LogConfig {
            json: match raw.log.format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(invalid(
                        "log.format",
                        format!("`{other}` is not `text` or `json`"),
                    ))
                }
            },
            level: raw.log.level.unwrap_or_else(|| "info".into()),
        };

        let st = raw.state;
        let state_redis = optional_secret(
            "state.redis_url",
            st.redis_url,
            "state.redis_url_env",
            st.redis_url_env,
            env,
        )?;
        let state = StateConfig {
            backend: st.backend.unwrap_or(StateBackend::Embedded),
            redis_url: state_redis,
            ttl: secs("state.ttl_secs", st.ttl_secs, 3600.0)?,
            redis_timeout: millis("state.redis_timeout_ms", st.redis_timeout_ms, 3_000)?,
            instance: st.instance.unwrap_or_else(default_instance),
            key_prefix: st.key_prefix.unwrap_or_else(|| "sg".into()),
        };
        if state.backend == StateBackend::Redis && state.redis_url.is_none() {
            return Err(invalid(
                "state.redis_url",
                "required when state.backend = \"redis\"",
            ));
        }

        let us = raw.usage;
        let usage_redis = optional_secret(
            "usage.redis_url",
            us.redis_url,
            "usage.redis_url_env",
            us.redis_url_env,
            env,
        )?
        .or_else(|| state.redis_url.clone());
        let sink = us.sink.unwrap_or(UsageSinkKind::File);
        // No defaults that point at the working directory: billing data must land where the
        // operator said.
        let path = match (us.path, sink) {
            (Some(path), _) => path,
            (None, UsageSinkKind::Redis) => PathBuf::new(),
            (None, UsageSinkKind::File) => {
                return Err(invalid(
                    "usage.path",
                    "required with the file sink: where usage records (billing data) are \
                     written, e.g. \"/var/lib/shardgate/usage.jsonl\"",
                ))
            }
        };
        let spool_dir = match us.spool_dir {
            Some(dir) => dir,
            None if !path.as_os_str().is_empty() => path.with_file_name("usage-spool"),
            None => {
                return Err(invalid(
                    "usage.spool_dir",
                    "required with the redis sink when usage.path is not set: where records \
                     wait while Redis fails",
                ))
            }
        };
        let usage = UsageConfig {
            sink,
            path,
            rotate_bytes: us.rotate_bytes.unwrap_or(256 * 1024 * 1024),
            fsync_interval: millis("usage.fsync_interval_ms", us.fsync_interval_ms, 200)?,
            redis_url: usage_redis,
            stream: us.stream.unwrap_or_else(|| "shardgate:usage".into()),
            spool_dir,
            spool_max_bytes: us.spool_max_bytes.unwrap_or(1024 * 1024 * 1024),
        };
        if usage.sink == UsageSinkKind::Redis && usage.redis_url.is_none() {
            return Err(invalid(
                "usage.redis_url",
                "required when usage.sink = \"redis\" (or set state.redis_url)",
            ));
        }
        if usage.rotate_bytes < 4096 {
            return Err(invalid("usage.rotate_bytes", "must be at least 4096"));
        }

        Ok(Config {
            server,
            upstream,
            client_keys,
            accounts,
            log,
            state,
            usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = r#"
        [usage]
        path = "/var/lib/shardgate/usage.jsonl"
        [[client_keys]]
        key = "sk-gw-local"
        [[accounts]]
        id = "acct-1"
        base_url = "http://127.0.0.1:9000/v1"
        api_key = "sk-up"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.server.shards >= 1);
        assert_eq!(c.accounts[0].max_conns, 64);
        assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.accounts[0].transport, Transport::Ws);
        assert_eq!(c.client_keys[0].group, "default");
        assert_eq!(
            c.accounts[0].endpoint.responses_ws_url(),
            "ws://127.0.0.1:9000/v1/responses"
        );
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
    fn usage_records_never_default_to_the_working_directory() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(
            c.usage.spool_dir,
            PathBuf::from("/var/lib/shardgate/usage-spool")
        );
        let without = MINIMAL.replace("path = \"/var/lib/shardgate/usage.jsonl\"", "");
        let err = Config::parse(&without, &no_env).unwrap_err().to_string();
        assert!(err.contains("usage.path"), "{err}");
        let redis = without.replace(
            "[usage]",
            "[usage]\nsink = \"redis\"\nredis_url = \"redis://127.0.0.1/\"",
        );
        let err = Config::parse(&redis, &no_env).unwrap_err().to_string();
        assert!(err.contains("usage.spool_dir"), "{err}");
        let spooled = redis.replace("[usage]", "[usage]\nspool_dir = \"/var/spool/sg\"");
        let c = Config::parse(&spooled, &no_env).unwrap();
        assert_eq!(c.usage.spool_dir, PathBuf::from("/var/spool/sg"));
    }

    #[test]
    fn unknown_auth_kind_is_accepted_but_not_for_websocket() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert!(c.accounts[0].auth_supports_ws());
        let text = format!("{MINIMAL}auth = \"chatgpt_oauth\"\n");
        let c = Config::parse(&text, &no_env).unwrap();
        assert_eq!(c.accounts[0].auth, "chatgpt_oauth");
        assert!(!c.accounts[0].auth_supports_ws());
        let text = format!("{MINIMAL}auth = \" \"\n");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("accounts[0].auth"), "{err}");
    }

    #[test]
    fn seconds_past_the_largest_duration_are_refused_not_a_panic() {
        // The config fuzz target's seed huge_secs: Duration::from_secs_f64 panicked on 1e300.
        for v in ["1e300", "1.0e10", "nan", "inf", "0.0", "-1.0"] {
            let text = format!("[server]\nidle_timeout_secs = {v}\n{MINIMAL}");
            let err = Config::parse(&text, &no_env).unwrap_err().to_string();
            assert!(err.contains("server.idle_timeout_secs"), "{v}: {err}");
        }
        let text = format!("[server]\nidle_timeout_secs = 1e9\n{MINIMAL}");
        assert!(Config::parse(&text, &no_env).is_ok());
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

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(&format!("{MINIMAL}\n[server]\nlisen = \"x\""), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn invalid_value_is_named() {
        let text = MINIMAL.replace("http://127.0.0.1:9000/v1", "ftp://x");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("accounts[0].base_url"), "{err}");
    }

    #[test]
    fn env_secrets_resolve_and_never_print() {
        let text = MINIMAL.replace("api_key = \"sk-up\"", "api_key_env = \"UP_KEY\"");
        let c = Config::parse(&text, &|n| (n == "UP_KEY").then(|| "sk-secret-up".into())).unwrap();
        assert_eq!(c.accounts[0].api_key.expose(), "sk-secret-up");
        assert!(!format!("{c:?}").contains("sk-secret-up"));
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(
            err.contains("accounts[0].api_key_env") && err.contains("UP_KEY"),
            "{err}"
        );
    }

    #[test]
    fn group_without_account_is_rejected() {
        let text = MINIMAL.replace("key = \"sk-gw-local\"", "key = \"k\"\ngroup = \"other\"");
        let err = Config::parse(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains("client_keys[0].group"), "{err}");
    }

    #[test]
    fn endpoint_parsing() {
        let e = Endpoint::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!((e.tls, e.port, e.path.as_str()), (true, 443, "/v1"));
        assert_eq!(e.responses_ws_url(), "wss://api.openai.com/v1/responses");
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert_eq!(e.authority(), "[::1]:9000");
        assert!(Endpoint::parse("http://u:p@h/").is_err());
        assert!(Endpoint::parse("http://h:99999/").is_err());
        // Found by fuzz/fuzz_targets/config.rs: hosts that the URLs built from them do not
        // carry (an unbracketed IPv6 address, a quote, an empty name), and paths that would
        // break the request line.
        for bad in [
            "https://a:b:443/v1",
            "https://a\"b/v1",
            "https://x]:1",
            "http://:80/v1",
            "http://[zz]:80",
            "http://h/v1\r\nX-Injected: 1",
            "http://h/a b",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let e = Endpoint::parse("http://my-host_1.example:8080/v1").unwrap();
        assert_eq!(Endpoint::parse(&e.responses_ws_url()).unwrap().host, e.host);
    }

    #[test]
    fn toml_errors_name_the_place_but_never_echo_a_secret() {
        let secret = "sk-live-do-not-print-0123456789";
        let broken_line = format!("{MINIMAL}\n[[accounts]]\napi_key = \"{secret}\" trailing\n");
        let wrong_type = format!("{MINIMAL}\n[server]\nshards = \"{secret}\"\n");
        for text in [broken_line, wrong_type] {
            let err = Config::parse(&text, &no_env).unwrap_err().to_string();
            assert!(!err.contains("do-not-print"), "{err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn deeply_nested_toml_is_an_error_not_a_crash() {
        let text = format!(
            "{MINIMAL}\n[server]\nx = {}1{}\n",
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert!(Config::parse(&text, &no_env).is_err());
    }
}
