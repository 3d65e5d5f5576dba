//! One accepted TCP connection: optional TLS, then the HTTP/1.1 request loop that routes each
//! request to the WebSocket upgrade, the Responses endpoint or the control endpoints.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::errors::ApiError;
use super::http::{self, Reader};
use super::rest::{self, Next};
use super::state::{ConnState, Shared};
use super::{control, oauth, realtime, ws};
use crate::runtime::TcpStream;

/// Time a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves an accepted connection until it ends; never panics on what the peer sends.
pub async fn serve_tcp(stream: TcpStream, shared: Arc<Shared>) {
    let _open = shared.open_connection();
    match &shared.tls {
        None => serve(stream, &shared).await,
        Some(acceptor) => {
            let accepted =
                crate::runtime::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            match accepted {
                Some(Ok(tls)) => serve(tls, &shared).await,
                Some(Err(e)) => tracing::debug!(error = %e, "mock: TLS handshake failed"),
                None => tracing::debug!("mock: TLS handshake timed out"),
            }
        }
    }
}

/// The request loop on a (plain or TLS) stream.
async fn serve<S>(stream: S, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = Reader::new(stream);
    let mut conn = ConnState::default();
    loop {
        let head = match reader.read_head().await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(err) => {
                refuse_malformed(&mut reader, err.status()).await;
                return;
            }
        };
        let is_realtime = realtime::is_realtime(&head);
        if ws::is_upgrade(&head) && (is_realtime || head.path.ends_with("/responses")) {
            match ws::decide(&head, shared) {
                ws::Handshake::Accept(key) => {
                    let turn_state = shared.script(|q| q.turn_state());
                    let answer = ws::accept_response(&key, turn_state.as_deref());
                    if reader.stream().write_all(answer.as_bytes()).await.is_err()
                        || reader.stream().flush().await.is_err()
                    {
                        return;
                    }
                    if is_realtime {
                        let (stream, read_ahead) = reader.into_parts();
                        realtime::session(stream, read_ahead, shared, &head).await;
                        return;
                    }
                    conn.id(shared);
                    let (stream, read_ahead) = reader.into_parts();
                    ws::session(stream, read_ahead, shared, conn).await;
                    return;
                }
                ws::Handshake::Refuse(status) => {
                    let err = ws::refusal(status, &head);
                    match rest::error(&mut reader, &err, head.keep_alive()).await {
                        Ok(Next::KeepAlive) => continue,
                        Ok(Next::Close) | Err(_) => return,
                    }
                }
            }
        }
        let body = match reader.read_body(&head).await {
            Ok(body) => body,
            Err(err) => {
                refuse_malformed(&mut reader, err.status()).await;
                return;
            }
        };
        let keep_alive = head.keep_alive();
        let next = if head.path.starts_with(control::PREFIX) {
            control::handle(&mut reader, &head, &body, shared).await
        } else if head.path == oauth::TOKEN_PATH && head.method == "POST" {
            let (status, answer) = oauth::token(&body, shared);
            match http::respond(
                reader.stream(),
                status,
                "application/json",
                &[],
                answer.as_bytes(),
                keep_alive,
            )
            .await
            {
                Ok(()) if keep_alive => Ok(Next::KeepAlive),
                Ok(()) => Ok(Next::Close),
                Err(e) => Err(e),
            }
        } else if head.path.ends_with("/responses") {
            if head.method == "POST" {
                rest::handle(&mut reader, &head, &body, shared, &mut conn).await
            } else {
                rest::error(&mut reader, &ApiError::for_status(405), keep_alive).await
            }
        } else {
            rest::error(&mut reader, &ApiError::for_status(404), keep_alive).await
        };
        match next {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) | Err(_) => return,
        }
    }
}

/// Answers an unreadable request with `status` (when there is one to give) before closing.
async fn refuse_malformed<S>(reader: &mut Reader<S>, status: Option<u16>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(status) = status {
        let err = match status {
            400 => ApiError::invalid_request("Malformed HTTP request."),
            _ => ApiError::for_status(status),
        };
        let body = err.body_json();
        let _ = http::respond(
            reader.stream(),
            status,
            "application/json",
            &[],
            body.as_bytes(),
            false,
        )
        .await;
    }
}
