//! The checks a client frame passes before its turn costs anything (no lease, no upstream
//! byte): a well-formed frame, a `response.create`. Its UTF-8 is not among them: the frame
//! comes as [`Utf8Bytes`], checked once by whoever read it (the client WebSocket's raw read or
//! tungstenite, the POST body's reader).

use async_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::client_frame::ClientEventKind;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::ClientFrame;

/// The frame parsed, or the error the client gets for it. Public for `benches/shard.rs`
/// (`turn_check/`): the read → turn-check path of a client frame.
pub fn check(frame: &Utf8Bytes) -> Result<ClientFrame<'_>, GatewayError> {
    ClientFrame::parse_text(frame.as_str()).map_err(|e| e.to_gateway_error())
}

/// A turn runs only for `response.create`.
pub(super) fn check_kind(parsed: &ClientFrame<'_>) -> Result<(), GatewayError> {
    if parsed.kind() == ClientEventKind::ResponseCreate {
        return Ok(());
    }
    let t = parsed.event_type.as_deref().unwrap_or_default();
    Err(GatewayError::new(
        400,
        ErrorType::InvalidRequest,
        "unsupported_event_type",
        format!("unsupported event type `{t}`: send `response.create`"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked_before_any_cost() {
        let bad = Utf8Bytes::from_static(r#"{"type":"response.create","input":"#);
        assert_eq!(check(&bad).err().map(|e| e.code), Some("invalid_json"));
        let ok = Utf8Bytes::from_static(r#"{"type":"response.create","model":"m"}"#);
        let parsed = check(&ok).expect("a valid frame");
        assert_eq!(parsed.model.as_deref(), Some("m"));
        assert!(check_kind(&parsed).is_ok());
        let other = Utf8Bytes::from_static(r#"{"type":"response.cancel"}"#);
        let parsed = check(&other).expect("a valid frame");
        assert_eq!(
            check_kind(&parsed).err().map(|e| e.code),
            Some("unsupported_event_type")
        );
    }
}
