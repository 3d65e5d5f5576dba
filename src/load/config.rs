//! What a load run is started with.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Why options could not be turned into a [`LoadConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not `ws://host:port/path` or `http://host:port/path`.
    #[error("bad --url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host of the URL did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// `host:port`.
        host: String,
        /// The failure.
        source: std::io::Error,
    },
    /// A numeric option is out of range.
    #[error("{option} {reason}")]
    Range {
        /// The option name.
        option: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// How the sessions talk to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// WebSocket mode: one socket, `response.create` frames, many turns (`ws://`).
    WebSocket,
    /// HTTP: one `POST` with `"stream": true` per turn, events as SSE (`http://`).
    Sse,
    /// The Realtime API (`ws://…/realtime?model=…`): per turn, the input as audio appends, a
    /// commit and `response.create`, read up to `response.done`.
    Realtime,
}

impl Wire {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Wire::WebSocket => "websocket",
            Wire::Sse => "sse",
            Wire::Realtime => "realtime",
        }
    }
}

/// Where the sessions connect: a resolved address and the request target.
#[derive(Clone, Debug)]
pub struct Target {
    /// The address to dial.
    pub addr: SocketAddr,
    /// The URL as given (`ws://host:port/path` or `http://host:port/path`).
    pub url: String,
    /// The wire the scheme selects.
    pub wire: Wire,
    /// `host[:port]` for the `Host` header.
    pub authority: String,
    /// The request path (with query, if any).
    pub path: String,
}

impl Target {
    /// Parses and resolves a `ws://` (WebSocket) or `http://` (SSE) URL (port 80 when absent).
    pub fn parse(url: &str) -> Result<Target, ConfigError> {
        let bad = |reason: &str| ConfigError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let wire = match uri.scheme_str() {
            Some("ws") => Wire::WebSocket,
            Some("http") => Wire::Sse,
            Some("wss" | "https") => return Err(bad("TLS is not supported, use ws:// or http://")),
            _ => return Err(bad("the scheme must be ws:// or http://")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let host_port = format!(
            "{}:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        );
        let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|source| ConfigError::Resolve {
                host: host_port.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ConfigError::Resolve {
                host: host_port,
                source: std::io::Error::other("no address"),
            })?;
        let wire = match wire {
            Wire::WebSocket if uri.path().ends_with("/realtime") => Wire::Realtime,
            other => other,
        };
        let authority = uri
            .authority()
            .map_or_else(|| host.to_string(), |a| a.as_str().to_string());
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        Ok(Target {
            addr,
            url: url.to_string(),
            wire,
            authority,
            path,
        })
    }
}

/// When the run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Each connection runs this many turns.
    Turns(u64),
    /// Connections start turns until this much time has passed.
    Duration(Duration),
}

/// A load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Where to connect.
    pub target: Target,
    /// The client key sent as `Authorization: Bearer`.
    pub key: String,
    /// The `model` of every frame.
    pub model: String,
    /// Concurrent client connections.
    pub connections: usize,
    /// The stop condition.
    pub stop: Stop,
    /// Overall cap on turns started per second, across every connection.
    pub rate: Option<f64>,
    /// Chain each turn to the previous one with `previous_response_id` (always `store:false`).
    pub chain: bool,
    /// Send a `generate:false` warm-up before each turn and chain the turn to it.
    pub warmup: bool,
    /// Pad frames to about this many bytes (0: no padding).
    pub payload_bytes: usize,
    /// Executor threads.
    pub threads: usize,
    /// A turn (or warm-up) not finished after this long counts as an error.
    pub turn_timeout: Duration,
    /// TCP connect plus WebSocket handshake deadline.
    pub connect_timeout: Duration,
    /// Close the connection after this many turns and open a new one for the next (connect
    /// storms); `None` keeps each connection for the whole run.
    pub reconnect_every: Option<u64>,
    /// Idle mode: open every connection, hold it this long without sending anything, close.
    pub idle_hold: Option<Duration>,
    /// Idle mode: turns each connection runs before it is held (0: held as opened), so the
    /// probe reads what a session costs idle after real use.
    pub idle_turns: u64,
}

impl LoadConfig {
    /// A config with the defaults of the command line: 1 connection, 10 turns, no rate cap, no
    /// chaining, no warm-up, no padding, 1 thread, 30 s turn timeout, 10 s connect timeout.
    pub fn new(target: Target, key: &str) -> LoadConfig {
        LoadConfig {
            target,
            key: key.to_string(),
            model: "gpt-5-codex".to_string(),
            connections: 1,
            stop: Stop::Turns(10),
            rate: None,
            chain: false,
            warmup: false,
            payload_bytes: 0,
            threads: 1,
            turn_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_every: None,
            idle_hold: None,
            idle_turns: 0,
        }
    }

    /// Checks the ranges a run depends on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |option, reason| Err(ConfigError::Range { option, reason });
        if self.connections == 0 {
            return range("--connections", "must be at least 1");
        }
        if self.threads == 0 {
            return range("--threads", "must be at least 1");
        }
        if self.threads > self.connections {
            return range("--threads", "must not exceed --connections");
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return range("--rate", "must be a positive number");
            }
        }
        if self.turn_timeout.is_zero() {
            return range("--turn-timeout-secs", "must be positive");
        }
        if self.target.wire == Wire::Realtime && (self.warmup || self.chain) {
            return range(
                "--warmup/--store-false-chain",
                "a realtime session has no warm-ups and no previous_response_id",
            );
        }
        if self.target.wire == Wire::Sse && (self.warmup || self.chain) {
            return range(
                "--warmup/--store-false-chain",
                "need a ws:// URL: HTTP refuses generate:false and cannot chain store=false turns",
            );
        }
        if self.reconnect_every == Some(0) {
            return range("--reconnect-every", "must be at least 1");
        }
        if self.idle_hold.is_some_and(|d| d.is_zero()) {
            return range("--hold-secs", "must be positive");
        }
        if let Stop::Duration(d) = self.stop {
            if d.is_zero() {
                return range("--duration-secs", "must be positive");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/v1/responses").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.url, "ws://127.0.0.1:8080/v1/responses");
        assert_eq!(Target::parse("ws://127.0.0.1/v1").unwrap().addr.port(), 80);
        assert_eq!(t.wire, Wire::WebSocket);
        assert!(Target::parse("wss://127.0.0.1/v1").is_err());
        assert!(Target::parse("https://127.0.0.1/v1").is_err());
        let h = Target::parse("http://localhost:8081/v1/responses?x=1").unwrap();
        assert_eq!(h.wire, Wire::Sse);
        assert_eq!(h.authority, "localhost:8081");
        assert_eq!(h.path, "/v1/responses?x=1");
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn validates_ranges() {
        let t = Target::parse("ws://127.0.0.1:1/v1/responses").unwrap();
        let mut c = LoadConfig::new(t, "k");
        assert!(c.validate().is_ok());
        c.threads = 2;
        assert!(c.validate().is_err());
        c.threads = 1;
        c.rate = Some(0.0);
        assert!(c.validate().is_err());
        c.rate = Some(5.0);
        c.stop = Stop::Duration(Duration::ZERO);
        assert!(c.validate().is_err());
        c.stop = Stop::Turns(1);
        c.reconnect_every = Some(0);
        assert!(c.validate().is_err());
        c.reconnect_every = Some(1);
        assert!(c.validate().is_ok());
        let mut sse = LoadConfig::new(
            Target::parse("http://127.0.0.1:1/v1/responses").unwrap(),
            "k",
        );
        assert!(sse.validate().is_ok());
        sse.chain = true;
        assert!(sse.validate().is_err());
    }
}
