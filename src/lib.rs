//! shardgate: a thread-per-core gateway for the OpenAI Responses API, WebSocket mode first.
//!
//! # Layout
//! - [`runtime`]: the thin layer over glommio (executors, sockets, timers).
//! - [`config`]: the operator's TOML file, validated at start.
//! - [`protocol`]: the wire vocabulary shared by every thread: lazy client-frame fields, upstream
//!   event classification, usage extraction, OpenAI-style error bodies.
//! - [`net`]: transports below WebSocket: plain TCP or TLS upstream streams.
//! - [`shard`]: the data plane. One per core: listener and HTTP/WebSocket ingress, the relay loop
//!   of each client session, the upstream WebSocket client and the per-account connection pools.
//! - [`load`]: the load generator (`shardgate load`): client sessions measured with HdrHistogram.
//! - [`mock`]: a scriptable upstream that speaks the Responses WebSocket protocol, for tests and
//!   `perf/`.

pub mod config;
pub mod gateway;
pub mod load;
pub mod mock;
pub mod net;
pub mod protocol;
pub mod runtime;
pub mod shard;

/// The WebSocket implementation, re-exported so tests and tools use the same version.
pub use async_tungstenite::tungstenite;
