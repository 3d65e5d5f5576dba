//! The load generator: many client sessions speaking the Responses API in WebSocket mode or over
//! HTTP SSE to a gateway (or straight to the mock), measured with HdrHistogram.
//!
//! [`run`] drives a [`LoadConfig`] to completion and returns a [`Report`]; [`run_cli`] is the
//! `shardgate load` command around it. Every number is measured on the client:
//! - TTFT: from just before a turn's frame is written to the first `*.delta` event received.
//! - Event latency: one-way, receive wall clock minus the event's `mock_ts_us` (the mock's send
//!   stamp; only meaningful when the mock runs on the same host).
//! - Turn time: from just before the frame is written to the terminal event.
//! - Warm-up time (with `--warmup`): the same for the `generate:false` warm-up.
//! - Connect time: TCP connect plus WebSocket handshake (TCP connect alone over HTTP), for every
//!   connection opened.
//! - First turn: from the start of a connect to the end of the first turn on that connection
//!   (handshake + first turn, for connect storms).
//!
//! Modes besides plain turns: `reconnect_every` closes each connection after N turns (connect
//! storms); `idle_hold` only opens the connections and holds them (memory per idle session).
//!
//! Layout:
//! - `cli`: the command-line options and their validation into a [`LoadConfig`].
//! - `config`: what a run is started with.
//! - `frame`: the `response.create` frames the client sends, padded to a size.
//! - `event`: the few fields read from each server event.
//! - `transport`: the seam between a session and the wire (the [`Transport`] trait); `ws` is the
//!   WebSocket one, `sse` the HTTP one (`POST` + `text/event-stream`, framed by `protocol::http1`).
//! - `session`: one client connection running its turns, reconnecting after failures.
//! - `pace`: the optional overall turn-rate cap.
//! - `stats`: histograms and counters, merged across threads into a [`Report`].
//! - `report`: the human table and the JSON shape.
//! - `run`: threads, connections, the stop condition.

mod cli;
mod config;
mod event;
mod frame;
mod pace;
mod report;
mod run;
mod session;
mod sse;
mod stats;
mod transport;
mod ws;

pub use crate::metrics::export::HistSummary as HistogramSummary;
pub use cli::{run_cli, LoadArgs};
pub use config::{ConfigError, LoadConfig, Stop, Target, Wire};
pub use report::Report;
pub use run::{run, RunError};
pub use transport::{Transport, TransportError};
