//! Transports below WebSocket: plain TCP or TLS streams toward upstream, the TLS client
//! configuration built once per account, and the frame-end reads under a WebSocket.

pub mod frame_edge;
pub mod stream;
pub mod tls;

pub use frame_edge::FrameEdge;
pub use stream::UpstreamStream;
