//! shardgate: a thread-per-core gateway for the OpenAI Responses API, WebSocket mode first.
//!
//! # Layout
//! - [`runtime`]: the thin layer over glommio (executors, sockets, timers).
//! - [`listen_lock`]: one gateway per listen address (the claim taken before binding).
//! - [`config`]: the operator's TOML file, validated at start.
//! - [`protocol`]: the wire vocabulary shared by every thread: lazy client-frame fields, upstream
//!   event classification, usage extraction, OpenAI-style error bodies.
//! - [`net`]: transports below WebSocket: plain TCP or TLS upstream streams.
//! - [`shard`]: the data plane. One per core: listener and HTTP/WebSocket ingress, the relay loop
//!   of each client session, the upstream WebSocket client and the per-account connection pools.
//! - [`control`]: the control thread: usage sink, stats aggregation and the state store, fed
//!   by shards through a non-blocking queue.
//! - [`metrics`]: per-shard HdrHistograms and the snapshots shards ship to the control thread.
//! - [`usage`]: usage records (billing) and their durable sinks (JSONL file, Redis stream) with
//!   an on-disk spool for outages.
//! - [`stats`]: the stats socket, the admin `/metrics` listener and the `shardgate stats` client.
//! - [`error_chain`]: an error and its causes as one line, each cause once.
//! - [`logging`]: log setup and rate-limited error lines.
//! - [`process_memory`]: process-wide memory settings made at start (transparent huge pages).
//! - [`state`]: sticky state (response → connection, session → last response, pending calls),
//!   embedded or in Redis, owned by the control thread.
//! - [`load`]: the load generator (`shardgate load`): client sessions measured with HdrHistogram.
//! - [`mock`]: a scriptable upstream that speaks the Responses WebSocket protocol, for tests and
//!   `perf/`.

pub mod config;
pub mod control;
pub mod error_chain;
pub mod gateway;
pub mod listen_lock;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod net;
pub mod oauth;
pub mod process_memory;
pub mod protocol;
pub mod reload;
pub mod runtime;
pub mod shard;
pub mod state;
pub mod stats;
pub mod usage;

/// The WebSocket implementation, re-exported so tests and tools use the same version.
pub use async_tungstenite::tungstenite;
