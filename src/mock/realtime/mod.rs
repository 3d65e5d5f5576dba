//! The Realtime API (`GET …/realtime?model=…`): a session that answers like OpenAI's, in the GA
//! shape by default and the beta shape when the handshake carries `OpenAI-Beta: realtime=v1`.
//!
//! It sends `session.created` first; answers `session.update` with `session.updated`,
//! `conversation.item.create` with the item's creation, `input_audio_buffer.commit` with
//! `committed`; and plays each `response.create` as a response: text deltas, or audio deltas
//! with their transcript when the response's (or session's) output modalities include audio, or
//! a function call, then `response.done` with `usage` computed from what it received. Every
//! event carries `mock_ts_us` (its send time), as the Responses events do, for one-way latency.
//!
//! Faults and shapes are scripted in-band with `[[rt:…]]` directives anywhere in a client event
//! (an item's text, a response's instructions), applied to the next response:
//! `no_usage` (`response.done` without usage), `tool=NAME` (a function call), `chunks=N` (deltas,
//! default 4), `audio_ms=M` (audio per delta, default 100), `delay_ms=D` (between deltas),
//! `close=CODE` (close after half the deltas), `drop` (drop the connection after half the
//! deltas), `error=CODE` (an `error` event instead of a response).

mod plan;
mod play;
mod session;

use std::io;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use base64::Engine as _;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::{SinkExt, StreamExt};
use sonic_rs::{json, JsonContainerTrait, JsonValueMutTrait, JsonValueTrait, Value};

use super::events::{random_alnum, stamp};
use super::http::MAX_BODY;
use super::state::Shared;
use crate::protocol::http1::RequestHead;

use play::play;
use session::Session;

/// Whether `head` asks for the Realtime endpoint.
pub fn is_realtime(head: &RequestHead) -> bool {
    head.path.ends_with("/realtime")
}

/// How a response ended for the session.
enum Played {
    Done,
    Close(u16),
    Drop,
}

/// Runs a realtime session on an upgraded connection until the peer leaves or a fault ends it.
pub async fn session<S>(stream: S, read_ahead: Vec<u8>, shared: &Shared, head: &RequestHead)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let model = head
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("model="))
        .unwrap_or("gpt-realtime")
        .to_string();
    let beta = head
        .header_str("openai-beta")
        .is_some_and(|v| v.contains("realtime=v1"));
    shared.record(|s| {
        s.realtime_sessions_total += 1;
        s.models_seen.insert(model.clone());
    });
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_BODY))
        .max_frame_size(Some(MAX_BODY));
    let mut ws =
        WebSocketStream::from_partially_read(stream, read_ahead, Role::Server, Some(config)).await;
    let mut session = Session::new(beta, model);
    let created = json!({"type": "session.created", "event_id": session.event_id(), "session": session.object()});
    if send(&mut ws, &created).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        let text = match &message {
            Message::Text(t) => t.as_str(),
            Message::Close(_) => return,
            _ => continue,
        };
        match handle(&mut ws, &mut session, text, shared).await {
            Ok(Played::Done) => {}
            Ok(Played::Close(code)) => {
                shared.record(|s| *s.close_codes_sent.entry(code).or_default() += 1);
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "mock close".into(),
                };
                let _ = ws.close(Some(frame)).await;
                let linger = async { while let Some(Ok(_)) = ws.next().await {} };
                crate::runtime::timeout(Duration::from_secs(1), linger).await;
                return;
            }
            Ok(Played::Drop) | Err(_) => return,
        }
    }
}

async fn send<S>(ws: &mut WebSocketStream<S>, event: &Value) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(stamp(&event.to_string())))
        .await
        .map_err(to_io)
}

async fn feed<S>(ws: &mut WebSocketStream<S>, event: &Value) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.feed(Message::text(stamp(&event.to_string())))
        .await
        .map_err(to_io)
}

fn to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// Handles one client event.
async fn handle<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    text: &str,
    shared: &Shared,
) -> io::Result<Played>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(event) = sonic_rs::from_str::<Value>(text) else {
        let err = error_event(
            session,
            "invalid_request_error",
            "invalid_json",
            "Invalid JSON.",
        );
        send(ws, &err).await?;
        return Ok(Played::Done);
    };
    let kind = event
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    shared.record(|s| *s.realtime_client_events.entry(kind.clone()).or_default() += 1);
    if text.contains("[[rt:") {
        session.plan.apply(text);
    }
    match kind.as_str() {
        "session.update" => {
            if let Some(s) = event.get("session") {
                session.update(s);
            }
            let updated = json!({"type": "session.updated", "event_id": session.event_id(), "session": session.object()});
            send(ws, &updated).await?;
        }
        "conversation.item.create" => {
            let mut item = event.get("item").cloned().unwrap_or_else(|| json!({}));
            session.input_text_bytes += item_text_bytes(&item);
            let id = format!("item_{}", random_alnum(12));
            if let Some(obj) = item.as_object_mut() {
                obj.insert("id", id.as_str());
            }
            let names: &[&str] = if session.beta {
                &["conversation.item.created"]
            } else {
                &["conversation.item.added", "conversation.item.done"]
            };
            for name in names {
                let e = json!({"type": name, "event_id": session.event_id(), "previous_item_id": null, "item": item.clone()});
                feed(ws, &e).await?;
            }
            SinkExt::flush(ws).await.map_err(to_io)?;
        }
        "input_audio_buffer.append" => {
            let audio = event.get("audio").and_then(|a| a.as_str()).unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(audio)
                .map(|b| b.len() as u64)
                .unwrap_or(0);
            session.buffered_audio += bytes;
            shared.record(|s| s.realtime_audio_bytes_received += bytes);
        }
        "input_audio_buffer.commit" => {
            session.input_audio_bytes += std::mem::take(&mut session.buffered_audio);
            let item_id = format!("item_{}", random_alnum(12));
            let committed = json!({"type": "input_audio_buffer.committed", "event_id": session.event_id(), "previous_item_id": null, "item_id": item_id});
            send(ws, &committed).await?;
        }
        "input_audio_buffer.clear" => {
            session.buffered_audio = 0;
            let cleared =
                json!({"type": "input_audio_buffer.cleared", "event_id": session.event_id()});
            send(ws, &cleared).await?;
        }
        "response.create" => {
            let response = event.get("response");
            let modalities = response
                .and_then(|r| r.get("output_modalities").or_else(|| r.get("modalities")))
                .and_then(|m| m.as_array())
                .map(|m| {
                    m.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_else(|| session.output_modalities.clone());
            let plan = std::mem::take(&mut session.plan);
            return play(ws, session, &plan, &modalities, shared).await;
        }
        "response.cancel"
        | "conversation.item.delete"
        | "conversation.item.truncate"
        | "conversation.item.retrieve"
        | "output_audio_buffer.clear" => {}
        _ => {
            let message = format!("Invalid value: '{kind}'.");
            let err = error_event(session, "invalid_request_error", "invalid_value", &message);
            send(ws, &err).await?;
        }
    }
    Ok(Played::Done)
}

/// Text bytes an input item carries (message text parts, function call output).
fn item_text_bytes(item: &Value) -> u64 {
    let parts: u64 = item
        .get("content")
        .and_then(|c| c.as_array())
        .map(|c| {
            c.iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .map(|t| t.len() as u64)
                .sum()
        })
        .unwrap_or(0);
    parts
        + item
            .get("output")
            .and_then(|o| o.as_str())
            .map_or(0, |o| o.len() as u64)
}

fn error_event(session: &mut Session, kind: &str, code: &str, message: &str) -> Value {
    json!({"type": "error", "event_id": session.event_id(), "error": {"type": kind, "code": code, "message": message, "param": null, "event_id": null}})
}
