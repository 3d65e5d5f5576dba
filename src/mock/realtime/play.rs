//! Playing one scripted response: text or audio deltas (with their transcript) or a function
//! call, the faults its plan asks for, then `response.done` with usage from what was received.

use std::io;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use base64::Engine as _;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::SinkExt;
use sonic_rs::{json, JsonContainerTrait, JsonValueMutTrait, Value};

use crate::mock::events::{delta_text, random_alnum};
use crate::mock::state::Shared;

use super::plan::Plan;
use super::session::Session;
use super::{error_event, feed, send, to_io, Played};

/// Plays one response.
pub(super) async fn play<S>(
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
