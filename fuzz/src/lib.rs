//! Helpers shared by the fuzz targets: cutting one fuzz input into the pieces a socket might
//! deliver, and decoding a body from such pieces, so every target can check that the result
//! does not depend on where the reads were cut.

use shardgate::protocol::http1::{BodyDecoder, Framing, Http1Error};

/// Splits `data` into a parameter byte and the rest; `None` for an empty input.
pub fn param(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(p, rest)| (*p, rest))
}

/// The read sizes a peer's bytes arrive in: every piece is `step` bytes (at least 1), the
/// last one shorter.
pub fn pieces(wire: &[u8], step: usize) -> impl Iterator<Item = &[u8]> {
    wire.chunks(step.max(1))
}

/// What decoding one body gave: the body bytes, then `Ok(done)` or the error that stopped it.
pub type Decoded = (Vec<u8>, Result<bool, Http1Error>);

/// Decodes a body of `framing` within `limit` from `wire` delivered in reads of `step` bytes,
/// as the gateway's readers do (unused bytes stay buffered and the next read is appended).
/// Checks on the way that the decoder never hands out more bytes than it consumed, never
/// consumes more than it was given, and never goes past `limit` for a framed body.
pub fn decode_in_steps(framing: Framing, limit: u64, wire: &[u8], step: usize) -> Decoded {
    let mut decoder = match BodyDecoder::with_limit(framing, limit) {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut body = Vec::new();
    let mut pending = Vec::new();
    for piece in pieces(wire, step) {
        if decoder.is_done() {
            break;
        }
        pending.extend_from_slice(piece);
        let mut handed = 0;
        let used = match decoder.decode(&pending, |b| {
            handed += b.len();
            body.extend_from_slice(b);
        }) {
            Ok(used) => used,
            Err(e) => return (body, Err(e)),
        };
        assert!(used <= pending.len(), "used {used} of {}", pending.len());
        assert!(handed <= used, "handed out {handed} bytes from {used}");
        pending.drain(..used);
    }
    if framing != Framing::UntilClose {
        assert!(body.len() as u64 <= limit, "body over the limit");
    }
    if let Framing::Length(n) = framing {
        assert!(body.len() as u64 <= n, "body over its content-length");
    }
    let done = decoder.is_done() || decoder.end_of_stream();
    (body, Ok(done))
}
