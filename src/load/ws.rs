//! The WebSocket transport: one socket, many sequential turns.

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use http::HeaderValue;

use crate::runtime::{self, TcpStream};

use super::config::LoadConfig;
use super::transport::{Transport, TransportError};

/// The `OpenAI-Beta` value Codex sends on the handshake.
const OPENAI_BETA_WS: &str = "responses_websockets=2026-02-06";

/// Largest event accepted from the server.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A client WebSocket to `/v1/responses`.
pub struct WsTransport {
    ws: WebSocketStream<TcpStream>,
}

fn io_error(e: WsError) -> TransportError {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => TransportError::Closed(1006),
        WsError::Protocol(p) => {
            use async_tungstenite::tungstenite::error::ProtocolError;
            match p {
                ProtocolError::ResetWithoutClosingHandshake => TransportError::Closed(1006),
                other => TransportError::Io(other.to_string()),
            }
        }
        WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            TransportError::Closed(1006)
        }
        other => TransportError::Io(other.to_string()),
    }
}

impl Transport for WsTransport {
    async fn open(config: &LoadConfig) -> Result<Self, TransportError> {
        let mut request = config
            .target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| TransportError::Handshake(e.to_string()))?;
        let auth = HeaderValue::from_str(&format!("Bearer {}", config.key))
            .map_err(|e| TransportError::Handshake(e.to_string()))?;
        request.headers_mut().insert("authorization", auth);
        request
            .headers_mut()
            .insert("openai-beta", HeaderValue::from_static(OPENAI_BETA_WS));
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let open = async {
            let tcp = runtime::connect(config.target.addr, config.connect_timeout)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::TimedOut => TransportError::ConnectTimeout,
                    _ => TransportError::Connect(e),
                })?;
            let (ws, _) =
                async_tungstenite::client_async_with_config(request, tcp, Some(ws_config))
                    .await
                    .map_err(|e| match e {
                        WsError::Http(response) => {
                            TransportError::Refused(response.status().as_u16())
                        }
                        other => TransportError::Handshake(other.to_string()),
                    })?;
            Ok(WsTransport { ws })
        };
        runtime::timeout(config.connect_timeout, open)
            .await
            .ok_or(TransportError::ConnectTimeout)?
    }

    async fn send(&mut self, frame: String) -> Result<(), TransportError> {
        self.ws.send(Message::text(frame)).await.map_err(io_error)
    }

    async fn recv(&mut self) -> Result<String, TransportError> {
        loop {
            match self.ws.next().await {
                None => return Err(TransportError::Closed(1006)),
                Some(Err(e)) => return Err(io_error(e)),
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(TransportError::Closed(
                        frame.map(|f| u16::from(f.code)).unwrap_or(1005),
                    ))
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(TransportError::Io("unexpected binary frame".to_string()))
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}
