//! A scriptable mock of the upstream Responses API (WebSocket and HTTP/SSE), for tests and `perf/`.
//!
//! [`start`] runs a real server on its own glommio executors (one per shard, all bound to the same
//! port with `SO_REUSEPORT`) and returns a [`MockHandle`] to read its [`MockStats`], queue faults
//! with a [`Script`], and stop it. [`run_cli`] runs the same server as a process for load scripts,
//! which drive it through the `/_mock/stats`, `/_mock/script` and `/_mock/reset` endpoints.
//!
//! Layout:
//! - `config`: what the server is started with.
//! - `handle`: starting and stopping the shards.
//! - `state`: what the shards share (counters, script queue, stored responses).
//! - `stats`, `script`: the public shapes of counters and queued faults.
//! - `conn`: one TCP connection: TLS, HTTP/1.1 request loop, routing.
//! - `http`: request heads and bodies, response writing.
//! - `ws`: the WebSocket handshake and session loop.
//! - `idle`: a WebSocket connection between turns (pings, idle cut, unanswered pings).
//! - `rest`: `POST …/responses` (JSON and SSE).
//! - `realtime`: `GET …/realtime` sessions (the Realtime API, GA and beta shapes).
//! - `control`: the `/_mock/*` endpoints.
//! - `request`, `directives`, `events`, `turn`: one turn, from request to event sequence.
//! - `oauth`: the OAuth token endpoint and the ChatGPT backend's token check.
//! - `errors`: OpenAI-style error events and bodies.
//! - `tls`: the self-signed certificate.
//! - `wire_json`: JSON with the real API's key order (`type` first).
//! - `stop`: the cross-thread stop signal.
//! - `tasks`: a shard's connection tasks, aborted when it stops.
//! - `cli`: the command line.

mod cli;
mod config;
mod conn;
mod control;
mod directives;
mod errors;
mod events;
mod handle;
mod http;
mod idle;
mod oauth;
mod realtime;
mod request;
mod rest;
mod script;
mod state;
mod stats;
mod stop;
mod tasks;
mod tls;
mod turn;
mod wire_json;
mod ws;

pub use cli::{run_cli, MockArgs};
pub use config::MockConfig;
pub use handle::{start, MockHandle};
pub use oauth::MockOAuth;
pub use script::{Rule, Script};
pub use stats::MockStats;
