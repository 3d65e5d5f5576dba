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

use super::events::{delta_text, random_alnum, stamp};
use super::http::MAX_BODY;
use super::state::Shared;
use crate::protocol::http1::RequestHead;

/// Whether `head` asks for the Realtime endpoint.
pub fn is_realtime(head: &RequestHead) -> bool {
    head.path.ends_with("/realtime")
}

/// What a response is scripted to do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    usage: bool,
    tool: Option<String>,
    chunks: usize,
    audio_ms: u64,
    delay_ms: u64,
    close: Option<u16>,
    drop: bool,
    error: Option<String>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            usage: true,
            tool: None,
            chunks: 4,
            audio_ms: 100,
            delay_ms: 0,
            close: None,
            drop: false,
            error: None,
        }
    }
}

impl Plan {
    /// Applies every `[[rt:…]]` directive in `text`.
    fn apply(&mut self, text: &str) {
        let mut rest = text;
        while let Some(at) = rest.find("[[rt:") {
            let after = &rest[at + 5..];
            let Some(end) = after.find("]]") else {
                return;
            };
            for d in after[..end].split(',') {
                let (k, v) = d.split_once('=').unwrap_or((d, ""));
                let num = |v: &str| v.trim().parse::<u64>().ok();
                match k.trim() {
                    "no_usage" => self.usage = false,
                    "tool" => self.tool = Some(v.trim().to_string()),
                    "chunks" => self.chunks = num(v).unwrap_or(4) as usize,
                    "audio_ms" => self.audio_ms = num(v).unwrap_or(100),
                    "delay_ms" => self.delay_ms = num(v).unwrap_or(0),
                    "close" => self.close = num(v).and_then(|c| u16::try_from(c).ok()),
                    "drop" => self.drop = true,
                    "error" => self.error = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            rest = &after[end + 2..];
        }
    }
}

/// One session's state.
struct Session {
    beta: bool,
    id: String,
    model: String,
    instructions: String,
    tools: Value,
    output_modalities: Vec<String>,
    input_format: Value,
    output_format: Value,
    /// Bytes of input text since the last response.
    input_text_bytes: u64,
    /// Bytes of input audio appended and not committed yet.
    buffered_audio: u64,
    /// Bytes of committed input audio since the last response.
    input_audio_bytes: u64,
    responses: u64,
    plan: Plan,
    /// The next event id.
    events: u64,
}

/// How a response ended for the session.
enum Played {
    Done,
    Close(u16),
    Drop,
}

impl Session {
    fn new(beta: bool, model: String) -> Session {
        Session {
            beta,
            id: format!("sess_{}", random_alnum(16)),
            model,
            instructions: String::new(),
            tools: json!([]),
            output_modalities: vec!["audio".into()],
            input_format: json!({"type": "audio/pcm", "rate": 24000}),
            output_format: json!({"type": "audio/pcm", "rate": 24000}),
            input_text_bytes: 0,
            buffered_audio: 0,
            input_audio_bytes: 0,
            responses: 0,
            plan: Plan::default(),
            events: 0,
        }
    }

    fn event_id(&mut self) -> String {
        self.events += 1;
        format!("event_{}_{}", self.id, self.events)
    }

    /// Bytes per second of the output audio format.
    fn output_rate(&self) -> u64 {
        match self.output_format.get("type").and_then(|t| t.as_str()) {
            Some("audio/pcmu" | "audio/pcma") => 8_000,
            _ => {
                self.output_format
                    .get("rate")
                    .and_then(|r| r.as_u64())
                    .unwrap_or(24_000)
                    * 2
            }
        }
    }

    fn input_rate(&self) -> u64 {
        match self.input_format.get("type").and_then(|t| t.as_str()) {
            Some("audio/pcmu" | "audio/pcma") => 8_000,
            _ => {
                self.input_format
                    .get("rate")
                    .and_then(|r| r.as_u64())
                    .unwrap_or(24_000)
                    * 2
            }
        }
    }

    /// The `session` object, in the session's shape.
    fn object(&self) -> Value {
        if self.beta {
            let beta_name = |f: &Value| match f.get("type").and_then(|t| t.as_str()) {
                Some("audio/pcmu") => "g711_ulaw",
                Some("audio/pcma") => "g711_alaw",
                _ => "pcm16",
            };
            json!({
                "id": self.id, "object": "realtime.session", "model": self.model,
                "modalities": self.output_modalities.clone(),
                "instructions": self.instructions, "tools": self.tools.clone(),
                "input_audio_format": beta_name(&self.input_format),
                "output_audio_format": beta_name(&self.output_format),
            })
        } else {
            json!({
                "id": self.id, "object": "realtime.session", "type": "realtime",
                "model": self.model, "output_modalities": self.output_modalities.clone(),
                "instructions": self.instructions, "tools": self.tools.clone(),
                "audio": {
                    "input": {"format": self.input_format.clone()},
                    "output": {"format": self.output_format.clone(), "voice": "alloy"},
                },
            })
        }
    }

    /// Takes a `session.update`'s settings (either shape).
    fn update(&mut self, s: &Value) {
        if let Some(i) = s.get("instructions").and_then(|i| i.as_str()) {
            self.instructions = i.to_string();
        }
        if let Some(t) = s.get("tools") {
            self.tools = t.clone();
        }
        let modalities = s.get("output_modalities").or_else(|| s.get("modalities"));
        if let Some(m) = modalities.and_then(|m| m.as_array()) {
            self.output_modalities = m
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
        }
        let beta_format = |name: &str| match name {
            "g711_ulaw" => json!({"type": "audio/pcmu"}),
            "g711_alaw" => json!({"type": "audio/pcma"}),
            _ => json!({"type": "audio/pcm", "rate": 24000}),
        };
        if let Some(f) = s.get("input_audio_format").and_then(|f| f.as_str()) {
            self.input_format = beta_format(f);
        }
        if let Some(f) = s.get("output_audio_format").and_then(|f| f.as_str()) {
            self.output_format = beta_format(f);
        }
        if let Some(f) = s.pointer(["audio", "input", "format"]) {
            self.input_format = f.clone();
        }
        if let Some(f) = s.pointer(["audio", "output", "format"]) {
            self.output_format = f.clone();
        }
    }
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

/// Plays one response.
async fn play<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    plan: &Plan,
    modalities: &[String],
    shared: &Shared,
) -> io::Result<Played>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(code) = &plan.error {
        shared.record_fault("realtime_error");
        let err = error_event(session, "server_error", code, "The server had an error.");
        send(ws, &err).await?;
        return Ok(Played::Done);
    }
    session.responses += 1;
    let beta = session.beta;
    let response_id = format!("resp_{}", random_alnum(16));
    let item_id = format!("item_{}", random_alnum(12));
    let obj = "realtime.response";
    let created = json!({"type": "response.created", "event_id": session.event_id(), "response": {
        "id": response_id, "object": obj, "status": "in_progress", "output": [], "usage": null,
        "conversation_id": "conv_mock", "output_modalities": modalities,
    }});
    send(ws, &created).await?;
    let audio = modalities.iter().any(|m| m == "audio") && plan.tool.is_none();
    let half = plan.chunks / 2;
    let mut output_text_tokens = 0u64;
    let mut output_audio_ms = 0u64;
    let chunk_bytes = (plan.audio_ms * session.output_rate() / 1000) as usize;
    let chunk_b64 = base64::engine::general_purpose::STANDARD.encode(
        (0..chunk_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let (item, text_name, done_name) = if let Some(tool) = &plan.tool {
        let call_id = format!("call_{}", random_alnum(12));
        let item = json!({"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress", "name": tool, "call_id": call_id, "arguments": ""});
        (
            item,
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
        )
    } else if audio {
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress", "content": []});
        let name = if beta {
            "response.audio_transcript.delta"
        } else {
            "response.output_audio_transcript.delta"
        };
        let done = if beta {
            "response.audio_transcript.done"
        } else {
            "response.output_audio_transcript.done"
        };
        (item, name, done)
    } else {
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress", "content": []});
        let name = if beta {
            "response.text.delta"
        } else {
            "response.output_text.delta"
        };
        let done = if beta {
            "response.text.done"
        } else {
            "response.output_text.done"
        };
        (item, name, done)
    };
    let added = json!({"type": "response.output_item.added", "event_id": session.event_id(), "response_id": response_id, "output_index": 0, "item": item.clone()});
    feed(ws, &added).await?;
    let mut text = String::new();
    for i in 0..plan.chunks {
        if i == half && plan.chunks > 0 {
            if let Some(code) = plan.close {
                SinkExt::flush(ws).await.map_err(to_io)?;
                shared.record_fault("realtime_close");
                return Ok(Played::Close(code));
            }
            if plan.drop {
                SinkExt::flush(ws).await.map_err(to_io)?;
                shared.record_fault("realtime_drop");
                return Ok(Played::Drop);
            }
        }
        if audio {
            let name = if beta {
                "response.audio.delta"
            } else {
                "response.output_audio.delta"
            };
            let e = json!({"type": name, "event_id": session.event_id(), "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": chunk_b64});
            feed(ws, &e).await?;
            output_audio_ms += plan.audio_ms;
        }
        let piece = if plan.tool.is_some() {
            if i == 0 {
                "{\"city\":".to_string()
            } else if i + 1 == plan.chunks {
                "\"x\"}".to_string()
            } else {
                " ".to_string()
            }
        } else {
            delta_text(i, 6)
        };
        text.push_str(&piece);
        output_text_tokens += 1;
        let e = json!({"type": text_name, "event_id": session.event_id(), "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece});
        feed(ws, &e).await?;
        SinkExt::flush(ws).await.map_err(to_io)?;
        if plan.delay_ms > 0 {
            crate::runtime::sleep(Duration::from_millis(plan.delay_ms)).await;
        }
    }
    let done_field = if plan.tool.is_some() {
        "arguments"
    } else if audio {
        "transcript"
    } else {
        "text"
    };
    let mut done = json!({"type": done_name, "event_id": session.event_id(), "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0});
    if let Some(obj) = done.as_object_mut() {
        obj.insert(done_field, text.as_str());
    }
    feed(ws, &done).await?;
    let mut final_item = item;
    if let Some(obj) = final_item.as_object_mut() {
        obj.insert("status", "completed");
        if plan.tool.is_some() {
            obj.insert("arguments", text.as_str());
        } else {
            let part = if audio {
                json!([{"type": "output_audio", "transcript": text}])
            } else {
                json!([{"type": "output_text", "text": text}])
            };
            obj.insert("content", part);
        }
    }
    let item_done = json!({"type": "response.output_item.done", "event_id": session.event_id(), "response_id": response_id, "output_index": 0, "item": final_item.clone()});
    feed(ws, &item_done).await?;
    let input_text_tokens = (session.instructions.len() as u64
        + session.tools.to_string().len() as u64
            * u64::from(session.tools.as_array().is_some_and(|t| !t.is_empty()))
        + std::mem::take(&mut session.input_text_bytes))
    .div_ceil(4);
    let input_audio_ms =
        std::mem::take(&mut session.input_audio_bytes) * 1000 / session.input_rate();
    let input_audio_tokens = input_audio_ms / 100;
    let output_audio_tokens = output_audio_ms / 50;
    let cached = if session.responses > 1 {
        input_text_tokens / 2
    } else {
        0
    };
    let input_tokens = input_text_tokens + input_audio_tokens;
    let output_tokens = output_text_tokens + output_audio_tokens;
    let usage = if plan.usage {
        json!({
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {"text_tokens": input_text_tokens, "audio_tokens": input_audio_tokens, "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0}},
            "output_token_details": {"text_tokens": output_text_tokens, "audio_tokens": output_audio_tokens},
        })
    } else {
        shared.record(|s| s.realtime_responses_without_usage += 1);
        Value::new_null()
    };
    let done = json!({"type": "response.done", "event_id": session.event_id(), "response": {
        "id": response_id, "object": obj, "status": "completed", "output": [final_item],
        "conversation_id": "conv_mock", "output_modalities": modalities, "usage": usage,
    }});
    feed(ws, &done).await?;
    SinkExt::flush(ws).await.map_err(to_io)?;
    shared.record(|s| s.realtime_responses_total += 1);
    Ok(Played::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_shape_the_next_response() {
        let mut plan = Plan::default();
        plan.apply("say [[rt:no_usage,chunks=7]] and [[rt:tool=get_weather, close=1011]]");
        assert_eq!(
            plan,
            Plan {
                usage: false,
                tool: Some("get_weather".into()),
                chunks: 7,
                close: Some(1011),
                ..Plan::default()
            }
        );
    }
}
