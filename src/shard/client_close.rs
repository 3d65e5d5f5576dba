//! How a client WebSocket session ends: the close code for each reason (RFC 6455 §7.4.1), the
//! echo of a client's own close (§5.5.1), and the `client_closes{reason}` counters.
//!
//! tungstenite queues the reply to a client's close frame but writes it only when the stream is
//! flushed again; a session that just dropped the socket after reading a close left its client
//! with a reset (1006) instead of a close handshake. Protocol violations it reports as errors and
//! leaves the connection open: the gateway closes with the code the RFC names for each.

use std::time::Duration;

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Error as WsError;
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::SinkExt;

use crate::runtime;

use super::counters::{bump, ShardCounters};

/// Labeled-counter family of the closes the gateway ends client sessions with, by reason.
pub const CLIENT_CLOSES: &str = "client_closes";

/// Longest wait for a close frame (or the echo of the client's) to be written.
const CLOSE_WRITE_LIMIT: Duration = Duration::from_secs(1);

/// Why the gateway ends a client session, each with its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed: its close frame is echoed (its code, 1000 for a normal close).
    Echo,
    /// A framing violation (unmasked frame, reserved opcode, RSV bits, bad fragmentation,
    /// oversized control frame, bad close payload): 1002.
    ProtocolError,
    /// A text frame (or close reason) that is not UTF-8: 1007.
    InvalidPayload,
    /// A binary message: the Responses API speaks JSON text frames only: 1003.
    Unsupported,
    /// A message over `max_message_bytes`: 1009.
    TooBig,
    /// No first `response.create` within `first_message_timeout_secs`: 1008.
    FirstMessageTimeout,
    /// Idle between turns for `idle_timeout_secs`: 1000.
    IdleTimeout,
    /// The gateway shuts down: 1001.
    GoingAway,
    /// The session's key was removed or rotated by a reload: 1008.
    Revoked,
}

impl CloseReason {
    /// The `client_closes` label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Echo => "echo",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidPayload => "invalid_payload",
            CloseReason::Unsupported => "unsupported_data",
            CloseReason::TooBig => "too_big",
            CloseReason::FirstMessageTimeout => "first_message_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::GoingAway => "going_away",
            CloseReason::Revoked => "revoked",
        }
    }

    /// The close frame the gateway sends (none for an echo: tungstenite queued the reply).
    pub fn frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            CloseReason::Echo => return None,
            CloseReason::ProtocolError => (CloseCode::Protocol, "protocol error"),
            CloseReason::InvalidPayload => (CloseCode::Invalid, "text frame is not valid UTF-8"),
            CloseReason::Unsupported => (
                CloseCode::Unsupported,
                "binary frames are not supported; send JSON text frames",
            ),
            CloseReason::TooBig => (CloseCode::Size, "message too big"),
            CloseReason::FirstMessageTimeout => {
                (CloseCode::Policy, "missing first response.create message")
            }
            CloseReason::IdleTimeout => (CloseCode::Normal, "websocket idle timeout"),
            CloseReason::GoingAway => (CloseCode::Away, "going away"),
            CloseReason::Revoked => (CloseCode::Policy, "api key no longer valid"),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }

    /// The close a read error calls for; `None` when the connection is simply gone (reset,
    /// I/O error, already closed).
    pub fn of_error(e: &WsError) -> Option<CloseReason> {
        match e {
            WsError::Capacity(_) => Some(CloseReason::TooBig),
            WsError::Utf8(_) => Some(CloseReason::InvalidPayload),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
            WsError::Protocol(_) => Some(CloseReason::ProtocolError),
            _ => None,
        }
    }
}

/// Ends a client session for `reason`: sends its close frame (or, for [`CloseReason::Echo`],
/// writes the reply tungstenite queued), waiting at most a second, and counts it.
pub async fn close_client<S>(
    client: &mut WebSocketStream<S>,
    counters: &ShardCounters,
    reason: CloseReason,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    counters.bump_labeled(CLIENT_CLOSES, reason.label());
    match reason.frame() {
        Some(frame) => {
            let _ = runtime::timeout(CLOSE_WRITE_LIMIT, client.close(Some(frame))).await;
        }
        None => {
            let _ = runtime::timeout(CLOSE_WRITE_LIMIT, client.flush()).await;
        }
    }
}

/// Ends a client session after a read error: with the close code the error calls for, if any
/// (an oversized message is also counted in `oversize_messages`).
pub async fn close_after_error<S>(
    client: &mut WebSocketStream<S>,
    counters: &ShardCounters,
    e: &WsError,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(reason) = CloseReason::of_error(e) else {
        return;
    };
    if reason == CloseReason::TooBig {
        bump(&counters.oversize_messages);
    }
    close_client(client, counters, reason).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::error::CapacityError;

    #[test]
    fn read_errors_map_to_the_rfc_close_codes() {
        let code = |e: WsError| {
            CloseReason::of_error(&e)
                .and_then(CloseReason::frame)
                .map(|f| u16::from(f.code))
        };
        assert_eq!(
            code(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            Some(1002)
        );
        assert_eq!(
            code(WsError::Protocol(ProtocolError::NonZeroReservedBits)),
            Some(1002)
        );
        assert_eq!(
            code(WsError::Protocol(ProtocolError::UnknownDataFrameType(3))),
            Some(1002)
        );
        assert_eq!(code(WsError::Utf8("bad".into())), Some(1007));
        let too_long = CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        };
        assert_eq!(code(WsError::Capacity(too_long)), Some(1009));
        assert_eq!(
            code(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            None
        );
        assert_eq!(code(WsError::ConnectionClosed), None);
        assert_eq!(
            CloseReason::Unsupported.frame().map(|f| u16::from(f.code)),
            Some(1003)
        );
    }
}
