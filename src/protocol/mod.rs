//! The wire vocabulary shared by every thread: what a client frame asks for, what an upstream
//! event is, how usage is read, and how errors are written back in OpenAI's shape.
//!
//! Everything here reads JSON lazily and borrows from the frame it was given: a frame that is
//! only relayed is scanned, never copied or fully parsed. A client frame is read in one pass
//! by a strict cursor of our own (`json_scan`); other reads use sonic-rs.

pub mod client_frame;
pub mod error_body;
pub(crate) mod fields;
pub mod http1;
pub(crate) mod json_chunk;
pub mod json_depth;
pub(crate) mod json_scan;
mod json_skip;
pub(crate) mod lazy;
pub mod realtime;
pub mod redact;
mod short_str;
pub mod sse;
pub(crate) mod string_block;
pub mod upstream_event;
pub mod usage;

pub use client_frame::{ClientFrame, ClientFrameError};
pub use upstream_event::{EventKind, TerminalKind, UpstreamError, UpstreamEvent};
pub use usage::Usage;
