//! The first step of an accepted connection on a TLS listener: the TLS handshake, bounded in
//! time, in the connection's own task (a slow client never holds the accept loop). A client
//! that speaks plain HTTP to the TLS port gets a plain-text 400 naming the scheme to use, so a
//! misconfigured `http://` base URL reads as such instead of as a hang or a reset.

use std::time::Duration;

use crate::net::ClientStream;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::runtime::{self, TcpStream};

use super::http_head;
use super::Shard;

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Labeled-counter family of connections refused before any request: `plain_http`,
/// `handshake` (failed: no shared version, cipher or ALPN protocol, garbage), `timeout`.
const TLS_REFUSED: &str = "tls_refused";

/// The connection's stream once it is ready for HTTP: the TCP stream itself on a plain
/// listener, else after a TLS handshake completed within `deadline`. `None` when the
/// connection was refused (and closed).
pub async fn open(shard: &Shard, tcp: TcpStream, deadline: Duration) -> Option<ClientStream> {
    let Some(tls) = &shard.listener_tls else {
        return Some(ClientStream::Plain(tcp));
    };
    let mut first = [0u8; 1];
    match runtime::timeout(deadline, tcp.peek(&mut first)).await {
        None => {
            shard.counters.bump_labeled(TLS_REFUSED, "timeout");
            return None;
        }
        Some(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD => {
            shard.counters.bump_labeled(TLS_REFUSED, "plain_http");
            refuse_plain(ClientStream::Plain(tcp)).await;
            return None;
        }
        Some(Ok(1)) => {}
        Some(_) => return None,
    }
    match runtime::timeout(deadline, tls.acceptor().accept(tcp)).await {
        Some(Ok(stream)) => Some(ClientStream::Tls(Box::new(stream))),
        Some(Err(e)) => {
            shard.counters.bump_labeled(TLS_REFUSED, "handshake");
            tracing::debug!(shard = shard.id, error = %e, "client TLS handshake failed");
            None
        }
        None => {
            shard.counters.bump_labeled(TLS_REFUSED, "timeout");
            None
        }
    }
}

/// Answers a plain-text request on the TLS port with 400 and closes.
async fn refuse_plain(mut stream: ClientStream) {
    let err = GatewayError::new(
        400,
        ErrorType::InvalidRequest,
        "tls_required",
        "this port speaks TLS: use https:// (or wss://)",
    );
    if http_head::write_error(&mut stream, &err, &[], false)
        .await
        .is_ok()
    {
        http_head::linger_close(&mut stream).await;
    }
}
