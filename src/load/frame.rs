//! The `response.create` frames a session sends (and a realtime turn's events).

use serde::Serialize;

/// What one frame asks for.
#[derive(Clone, Copy, Debug)]
pub struct FrameSpec<'a> {
    /// The `model` field.
    pub model: &'a str,
    /// The text of the user message, before padding.
    pub text: &'a str,
    /// `previous_response_id`, when chaining.
    pub previous: Option<&'a str>,
    /// `true` for a warm-up (`generate:false`).
    pub warmup: bool,
    /// Pad the frame to this many bytes (no padding when the frame is already larger).
    pub pad_to: usize,
    /// `true` for an HTTP request body: no `type`, and `"stream": true`.
    pub http: bool,
    /// `true` for a realtime turn ([`realtime_turn`]; `pad_to` is its input audio bytes).
    pub realtime: bool,
}

#[derive(Serialize)]
struct Create<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    model: &'a str,
    store: bool,
    input: [Message<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_response_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
}

#[derive(Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    content: [Content<'a>; 1],
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

/// Padding characters: plain ASCII, so every byte added to the text adds one byte to the frame.
const FILLER: &[u8] = b"the quick brown fox jumps over the lazy dog ";

fn serialize(spec: &FrameSpec<'_>, text: &str) -> Result<String, sonic_rs::Error> {
    sonic_rs::to_string(&Create {
        kind: (!spec.http).then_some("response.create"),
        model: spec.model,
        store: false,
        input: [Message {
            kind: "message",
            role: "user",
            content: [Content {
                kind: "input_text",
                text,
            }],
        }],
        previous_response_id: spec.previous,
        generate: spec.warmup.then_some(false),
        stream: spec.http.then_some(true),
    })
}

/// Builds the frame (or, with `http`, the request body): `store:false`, one user message, padded with ASCII filler appended to the
/// text so the frame is exactly `pad_to` bytes when it would otherwise be shorter.
pub fn build(spec: &FrameSpec<'_>) -> Result<String, sonic_rs::Error> {
    let plain = serialize(spec, spec.text)?;
    let Some(missing) = spec.pad_to.checked_sub(plain.len()).filter(|m| *m > 0) else {
        return Ok(plain);
    };
    let mut text = String::with_capacity(spec.text.len() + missing);
    text.push_str(spec.text);
    text.extend(FILLER.iter().cycle().take(missing).map(|b| char::from(*b)));
    serialize(spec, &text)
}

/// Bytes of audio per `input_audio_buffer.append`: 100 ms of 24 kHz PCM16, the size of the audio
/// deltas the mock answers with.
pub const REALTIME_AUDIO_CHUNK: usize = 4800;

/// A realtime turn's events: the text as a user item (asking the mock for one audio delta per
/// chunk appended, so the audio is as large both ways), `audio_bytes` of input audio in
/// [`REALTIME_AUDIO_CHUNK`] appends (at least one), the commit, and `response.create` for
/// audio out.
pub fn realtime_turn(text: &str, audio_bytes: usize) -> Result<Vec<String>, sonic_rs::Error> {
    use base64::Engine as _;
    let chunks = audio_bytes.div_ceil(REALTIME_AUDIO_CHUNK).max(1);
    let item = sonic_rs::json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": format!("{text} [[rt:chunks={chunks}]]")}]}});
    let audio = base64::engine::general_purpose::STANDARD.encode(vec![0u8; REALTIME_AUDIO_CHUNK]);
    let append = sonic_rs::to_string(
        &sonic_rs::json!({"type": "input_audio_buffer.append", "audio": audio}),
    )?;
    let mut out = Vec::with_capacity(chunks + 3);
    out.push(sonic_rs::to_string(&item)?);
    out.extend(std::iter::repeat_n(append, chunks));
    out.push(r#"{"type":"input_audio_buffer.commit"}"#.to_string());
    out.push(
        r#"{"type":"response.create","response":{"output_modalities":["audio"]}}"#.to_string(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(previous: Option<&'a str>, warmup: bool, pad_to: usize) -> FrameSpec<'a> {
        FrameSpec {
            model: "m",
            text: "hello \"you\"",
            previous,
            warmup,
            pad_to,
            http: false,
            realtime: false,
        }
    }

    #[test]
    fn a_realtime_turn_appends_its_audio_in_chunks_then_asks_for_audio() {
        let events = realtime_turn("hi", 3 * REALTIME_AUDIO_CHUNK - 1).unwrap();
        assert_eq!(events.len(), 6);
        assert!(events[0].contains("[[rt:chunks=3]]"));
        assert!(events[1..4]
            .iter()
            .all(|e| e.contains(r#""type":"input_audio_buffer.append""#)));
        assert!(events[5].contains("response.create"));
    }

    #[test]
    fn plain_frame_has_the_create_shape() {
        let f = build(&spec(None, false, 0)).unwrap();
        let v: sonic_rs::Value = sonic_rs::from_str(&f).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v.get("type").as_str(), Some("response.create"));
        assert_eq!(v.get("store").as_bool(), Some(false));
        assert!(v.get("previous_response_id").is_none());
        assert!(v.get("generate").is_none());
        let text = v
            .pointer(sonic_rs::pointer!["input", 0, "content", 0, "text"])
            .as_str()
            .map(str::to_owned);
        assert_eq!(text.as_deref(), Some("hello \"you\""));
    }

    #[test]
    fn warmup_and_chain_fields() {
        let f = build(&spec(Some("resp_\"x"), true, 0)).unwrap();
        let v: sonic_rs::Value = sonic_rs::from_str(&f).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v.get("generate").as_bool(), Some(false));
        assert_eq!(v.get("previous_response_id").as_str(), Some("resp_\"x"));
    }

    #[test]
    fn http_body_streams_and_has_no_type() {
        let f = build(&FrameSpec {
            http: true,
            ..spec(None, false, 0)
        })
        .unwrap();
        let v: sonic_rs::Value = sonic_rs::from_str(&f).unwrap();
        use sonic_rs::JsonValueTrait;
        assert!(v.get("type").is_none());
        assert_eq!(v.get("stream").as_bool(), Some(true));
        assert!(build(&spec(None, false, 0))
            .unwrap()
            .contains("\"type\":\"response.create\""));
    }

    #[test]
    fn pads_to_the_exact_size() {
        for size in [200, 1000, 32 * 1024] {
            let f = build(&spec(Some("resp_1"), false, size)).unwrap();
            assert_eq!(f.len(), size);
            assert!(sonic_rs::from_str::<sonic_rs::Value>(&f).is_ok());
        }
        let small = build(&spec(None, false, 10)).unwrap();
        assert_eq!(small, build(&spec(None, false, 0)).unwrap());
    }
}
