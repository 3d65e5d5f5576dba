//! The WebSocket side: deciding a handshake (auth, scripted refusals) and running a session of
//! sequential `response.create` turns.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_util::{SinkExt, StreamExt};

use super::errors::ApiError;
use super::events::stamp;
use super::http::MAX_BODY;
use super::idle::{self, IdleClock, Mutable};
use super::request::CreateRequest;
use super::state::{ConnState, Shared};
use super::turn::{self, Ending, EventSink, Transport};
use crate::protocol::http1::RequestHead;

/// How long the mock waits for the peer's close reply after sending a close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// An unmasked text frame "hi" with RSV1 set: no extension was negotiated, so the peer must fail
/// the connection (RFC 6455 §5.2).
const RSV1_FRAME: [u8; 4] = [0xC1, 0x02, b'h', b'i'];

/// What to answer a handshake request with.
pub enum Handshake {
    /// 101 with this `Sec-WebSocket-Accept`.
    Accept(String),
    /// This status and JSON error instead of an upgrade.
    Refuse(u16),
}

/// Whether `head` asks for a WebSocket upgrade.
pub fn is_upgrade(head: &RequestHead) -> bool {
    head.method == "GET" && head.header_has_token("upgrade", "websocket")
}

/// Records the handshake's headers, then checks version, key, auth and the script, in that order.
pub fn decide(head: &RequestHead, shared: &Shared) -> Handshake {
    shared.record(|s| {
        s.last_handshake_headers = head.headers.iter().fold(
            Default::default(),
            |mut map: std::collections::BTreeMap<String, String>, (name, value)| {
                let value = String::from_utf8_lossy(value);
                map.entry(name.to_string())
                    .and_modify(|v| {
                        v.push_str(", ");
                        v.push_str(&value);
                    })
                    .or_insert_with(|| value.into_owned());
                map
            },
        );
        if let Some(auth) = head.header_str("authorization") {
            s.authorizations_seen.insert(auth.to_string());
        }
        s.paths_seen.insert(head.path.clone());
    });
    let decision = match head.header_str("sec-websocket-key") {
        _ if head.header_str("sec-websocket-version").map(str::trim) != Some("13") => {
            Handshake::Refuse(426)
        }
        None => Handshake::Refuse(400),
        Some(key) => {
            if !authorized(head, shared) {
                shared.record(|s| s.auth_failures += 1);
                Handshake::Refuse(401)
            } else {
                match shared.script(|q| q.next_handshake()) {
                    Some(status) if status != 101 => Handshake::Refuse(status),
                    _ => Handshake::Accept(derive_accept_key(key.trim().as_bytes())),
                }
            }
        }
    };
    let status = match decision {
        Handshake::Accept(_) => 101,
        Handshake::Refuse(status) => status,
    };
    shared.record(|s| {
        *s.handshakes.entry(status).or_default() += 1;
        if status == 101 {
            s.ws_connections_total += 1;
        }
    });
    decision
}

/// Whether `head` carries the key the mock requires (always, when it requires none) and, for a
/// mock acting as the ChatGPT backend, a live access token with its account id.
pub fn authorized(head: &RequestHead, shared: &Shared) -> bool {
    let key_ok = match &shared.cfg.require_key {
        None => true,
        Some(key) => head
            .header_str("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v.trim() == key),
    };
    key_ok && super::oauth::authorized(head, shared)
}

/// The 101 answer (no subprotocol, no extensions: permessage-deflate is declined), with the
/// scripted `x-codex-turn-state`, if any.
pub fn accept_response(accept_key: &str, turn_state: Option<&str>) -> String {
    let turn_state = turn_state
        .map(|v| format!("x-codex-turn-state: {v}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n{turn_state}\r\n"
    )
}

/// The refusal of a request without the required key, quoting (masked) what it presented.
pub fn unauthorized(head: &RequestHead) -> ApiError {
    let presented = head
        .header_str("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    ApiError::incorrect_key(presented.trim())
}

/// The refusal of a handshake as an error.
pub fn refusal(status: u16, head: &RequestHead) -> ApiError {
    match status {
        400 => ApiError::invalid_request("Invalid WebSocket handshake request."),
        401 => unauthorized(head),
        _ => ApiError::for_status(status),
    }
}

/// Runs a session on an upgraded connection until the peer leaves or a fault ends it.
pub async fn session<S>(stream: S, read_ahead: Vec<u8>, shared: &Shared, mut conn: ConnState)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if shared.script(|q| q.deaf_ws()) {
        shared.record_fault("deaf");
        // Holds the connection without ever reading it, until the mock stops.
        let _held = stream;
        return std::future::pending().await;
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_BODY))
        .max_frame_size(Some(MAX_BODY));
    let muted = Rc::new(Cell::new(false));
    let stream = Mutable::new(stream, muted.clone());
    let mut ws =
        WebSocketStream::from_partially_read(stream, read_ahead, Role::Server, Some(config)).await;
    let mut clock = IdleClock::new(shared);
    let mut pending: Option<Message> = None;
    loop {
        let message = match pending.take() {
            Some(m) => m,
            None => match idle::next_message(&mut ws, shared, &mut clock, &muted).await {
                Some(Ok(m)) => m,
                Some(Err(WsError::Capacity(_))) => {
                    let _ = close(&mut ws, shared, 1009).await;
                    return;
                }
                Some(Err(_)) | None => return,
            },
        };
        let bytes = match &message {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b.as_ref(),
            Message::Close(frame) => {
                note_close(shared, frame.as_ref());
                continue;
            }
            _ => continue,
        };
        let handled = handle_frame(&mut ws, bytes, shared, &mut conn).await;
        clock.turn_ended();
        match handled {
            Ok(Ending::Completed | Ending::Failed) => {}
            Ok(Ending::Close(code)) => {
                let _ = close(&mut ws, shared, code).await;
                return;
            }
            Ok(Ending::Drop) | Err(_) => return,
            Ok(Ending::Stall) => match next_data_frame(&mut ws, shared).await {
                Some(m) => pending = Some(m),
                None => return,
            },
            Ok(Ending::Garbage) => {
                if ws.get_mut().write_all(&RSV1_FRAME).await.is_err() {
                    return;
                }
                let _ = ws.get_mut().flush().await;
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Close(frame) = &m {
                        note_close(shared, frame.as_ref());
                    }
                }
                return;
            }
        }
    }
}

/// Handles one client frame: a turn, or an error event for an invalid frame.
async fn handle_frame<S>(
    ws: &mut WebSocketStream<S>,
    bytes: &[u8],
    shared: &Shared,
    conn: &mut ConnState,
) -> io::Result<Ending>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    shared.record(|s| s.note_ws_frame(bytes));
    let req = match CreateRequest::from_ws_frame(bytes) {
        Ok(req) => req,
        Err(err) => {
            shared.record(|s| s.invalid_requests_total += 1);
            send_error(ws, &ApiError::invalid_request(err.to_string())).await?;
            return Ok(Ending::Failed);
        }
    };
    let plan = match turn::begin(&req, shared, conn, Transport::WebSocket) {
        Ok(plan) => plan,
        Err(err) => {
            send_error(ws, &err).await?;
            return Ok(Ending::Failed);
        }
    };
    turn::play(&mut WsSink(ws), &plan).await?;
    turn::finish(&plan, shared, conn);
    Ok(plan.ending)
}

async fn send_error<S>(ws: &mut WebSocketStream<S>, err: &ApiError) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(stamp(&err.event_json(0))))
        .await
        .map_err(to_io)
}

/// While a turn stalls: waits for the next text or binary frame (`None` once the peer left).
async fn next_data_frame<S>(ws: &mut WebSocketStream<S>, shared: &Shared) -> Option<Message>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(m)) = ws.next().await {
        match &m {
            Message::Text(_) | Message::Binary(_) => return Some(m),
            Message::Close(frame) => note_close(shared, frame.as_ref()),
            _ => {}
        }
    }
    None
}

/// Counts a close frame the peer sent.
fn note_close(shared: &Shared, frame: Option<&CloseFrame>) {
    let code = frame.map_or(0, |f| u16::from(f.code));
    shared.record(|s| *s.close_codes_received.entry(code).or_default() += 1);
}

/// Sends a close frame with `code`, counts it, and waits briefly for the peer's reply.
async fn close<S>(ws: &mut WebSocketStream<S>, shared: &Shared, code: u16) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    shared.record(|s| *s.close_codes_sent.entry(code).or_default() += 1);
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "mock close".into(),
    };
    ws.close(Some(frame)).await?;
    crate::runtime::timeout(CLOSE_LINGER, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

fn to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// Events as WebSocket text frames: fed into tungstenite's write buffer, flushed on demand.
struct WsSink<'a, S>(&'a mut WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> EventSink for WsSink<'_, S> {
    async fn feed(&mut self, _kind: &str, json: String) -> io::Result<()> {
        self.0.feed(Message::text(json)).await.map_err(to_io)
    }

    async fn flush(&mut self) -> io::Result<()> {
        SinkExt::flush(self.0).await.map_err(to_io)
    }
}
