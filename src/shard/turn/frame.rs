//! The checks a client frame passes before its turn costs anything (no lease, no upstream
//! byte): valid UTF-8, a well-formed frame, a `response.create`.

use async_tungstenite::tungstenite::Utf8Bytes;
use bytes::Bytes;

use crate::protocol::client_frame::ClientEventKind;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::ClientFrame;

/// The frame as text (sent upstream as this very buffer when nothing rewrites it) and parsed.
/// Public for `benches/shard.rs` (`turn_check/`): the read → turn-check path of a client frame.
pub fn check(frame: &Bytes) -> Result<(Utf8Bytes, ClientFrame<'_>), GatewayError> {
    // `simdutf8` checks a 30 KB frame in a fifth of the time `std` takes on non-ASCII text
    // (`cargo bench --bench shard -- client_read/`); tungstenite's own `TryFrom` would check
    // it again with `std`.
    if simdutf8::basic::from_utf8(frame).is_err() {
        return Err(GatewayError::new(
            400,
            ErrorType::InvalidRequest,
            "invalid_json",
            "frame is not valid UTF-8",
        ));
    }
    // SAFETY: `frame` was checked to be valid UTF-8 just above, and `Bytes` is immutable.
    let text = unsafe { Utf8Bytes::from_bytes_unchecked(frame.clone()) };
    let parsed = ClientFrame::parse(frame).map_err(|e| e.to_gateway_error())?;
    Ok((text, parsed))
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
        let bad = Bytes::from_static(b"{\"type\":\"response.create\",\"input\":\"\xff\"}");
        assert_eq!(check(&bad).err().map(|e| e.code), Some("invalid_json"));
        // What `std` refuses is refused: an overlong form, a surrogate, a cut sequence.
        for bad in [&b"\"\xc0\xaf\""[..], b"\"\xed\xa0\x80\"", b"\"\xe2\x82"] {
            assert!(std::str::from_utf8(bad).is_err());
            let frame = Bytes::copy_from_slice(bad);
            assert_eq!(check(&frame).err().map(|e| e.code), Some("invalid_json"));
        }
        let ok = Bytes::from_static(br#"{"type":"response.create","model":"m"}"#);
        let (text, parsed) = check(&ok).expect("a valid frame");
        assert_eq!(text.as_str().as_bytes(), &ok[..]);
        assert!(check_kind(&parsed).is_ok());
        let other = Bytes::from_static(br#"{"type":"response.cancel"}"#);
        let (_, parsed) = check(&other).expect("a valid frame");
        assert_eq!(
            check_kind(&parsed).err().map(|e| e.code),
            Some("unsupported_event_type")
        );
    }
}
