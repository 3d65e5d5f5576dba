//! The seam between a session and the wire.
//!
//! A session only needs to open a connection, write a `response.create` body and read the events
//! of the turn back as JSON texts. The WebSocket transport (`ws`) keeps one socket for many turns;
//! the HTTP SSE transport (`sse`) makes one `POST /v1/responses` per [`Transport::send`] on a
//! keep-alive connection and returns the `data:` of its event stream from [`Transport::recv`].

use std::future::Future;

use super::config::LoadConfig;

/// Why the wire failed. [`TransportError::key`] is the name errors are counted under.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// Connect plus handshake took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The server answered the upgrade (or request) with a non-success HTTP status.
    #[error("refused with HTTP {0}")]
    Refused(u16),
    /// Any other handshake failure.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The server closed the connection, with the close code when it sent one (1006 otherwise).
    #[error("closed by the server with code {0}")]
    Closed(u16),
    /// An HTTP request was answered with a non-200 status (a JSON error, not a stream).
    #[error("answered with HTTP {0}")]
    Status(u16),
    /// An event stream ended cleanly before the turn's terminal event.
    #[error("the event stream ended before a terminal event")]
    StreamEnded,
    /// Reading or writing failed.
    #[error("i/o failed: {0}")]
    Io(String),
}

impl TransportError {
    /// The key this error is counted under in the report.
    pub fn key(&self) -> String {
        match self {
            TransportError::Connect(e) => format!("connect_{:?}", e.kind()),
            TransportError::ConnectTimeout => "connect_timeout".to_string(),
            TransportError::Refused(status) => format!("handshake_http_{status}"),
            TransportError::Handshake(_) => "handshake".to_string(),
            TransportError::Closed(code) => format!("close_{code}"),
            TransportError::Status(status) => format!("http_{status}"),
            TransportError::StreamEnded => "stream_ended".to_string(),
            TransportError::Io(_) => "io".to_string(),
        }
    }
}

/// A client connection that carries turns.
///
/// The futures are not `Send`: every connection lives on one executor thread.
pub trait Transport: Sized {
    /// Opens a connection for `config`'s target, within its connect timeout.
    fn open(config: &LoadConfig) -> impl Future<Output = Result<Self, TransportError>>;
    /// Writes one `response.create` body.
    fn send(&mut self, frame: String) -> impl Future<Output = Result<(), TransportError>>;
    /// Reads the next server event as JSON text.
    fn recv(&mut self) -> impl Future<Output = Result<String, TransportError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_failure() {
        assert_eq!(TransportError::Closed(1006).key(), "close_1006");
        assert_eq!(TransportError::Refused(401).key(), "handshake_http_401");
        assert_eq!(TransportError::Status(405).key(), "http_405");
        assert_eq!(
            TransportError::Connect(std::io::ErrorKind::ConnectionRefused.into()).key(),
            "connect_ConnectionRefused"
        );
    }
}
