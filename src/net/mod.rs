//! Transports below WebSocket: plain TCP or TLS streams toward upstream, and the TLS client
//! configuration built once per account.

pub mod stream;
pub mod tls;

pub use stream::UpstreamStream;
