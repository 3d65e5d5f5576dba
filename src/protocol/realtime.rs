//! Realtime API events (`/v1/realtime`), read lazily: the relay learns an event's `type` and, for
//! the few types that matter to billing, one or two fields, without allocating on the per-event
//! path. Audio deltas (the large, frequent events) are read with the allocation-free field walk
//! only; the rare lifecycle events (`session.*`, `response.done`, `conversation.item.create`) are
//! parsed with sonic-rs.
//!
//! Both interfaces are understood: the GA one (`response.output_audio.delta`, `session.audio.
//! input.format`) and the beta one (`OpenAI-Beta: realtime=v1`: `response.audio.delta`,
//! `session.input_audio_format`).

use serde::Deserialize;

use super::fields::fields;

/// What an event from upstream is, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `session.created`: the session's id, model and audio formats.
    SessionCreated,
    /// `session.updated`: the session's new settings.
    SessionUpdated,
    /// `response.created`: a response started.
    ResponseCreated,
    /// `response.done`: a response ended; carries its usage (or not).
    ResponseDone,
    /// An audio chunk of output (`response.output_audio.delta`, `response.audio.delta`).
    AudioDelta,
    /// A piece of output text: text, audio transcript or function-call arguments.
    TextDelta,
    /// An `error` event.
    Error,
    /// Anything else: relayed untouched.
    Other,
}

/// What a client event is, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// `session.update`: instructions, tools and audio formats for later responses.
    SessionUpdate,
    /// `input_audio_buffer.append`: an audio chunk of input.
    AudioAppend,
    /// `conversation.item.create`: an input item (text, function-call output).
    ItemCreate,
    /// Anything else: relayed untouched.
    Other,
}

/// One event, classified, with the raw value of its `delta` or `audio` string (without quotes)
/// when it is a delta or an append.
#[derive(Debug, Clone, Copy)]
pub struct Peek<'a, K> {
    /// The kind.
    pub kind: K,
    /// The payload string of a delta (`delta`) or append (`audio`), still JSON-escaped.
    pub payload: &'a [u8],
}

fn server_kind(t: &[u8]) -> ServerKind {
    match t {
        b"session.created" => ServerKind::SessionCreated,
        b"session.updated" => ServerKind::SessionUpdated,
        b"response.created" => ServerKind::ResponseCreated,
        b"response.done" => ServerKind::ResponseDone,
        b"response.output_audio.delta" | b"response.audio.delta" => ServerKind::AudioDelta,
        b"response.output_text.delta"
        | b"response.text.delta"
        | b"response.output_audio_transcript.delta"
        | b"response.audio_transcript.delta"
        | b"response.function_call_arguments.delta" => ServerKind::TextDelta,
        b"error" => ServerKind::Error,
        _ => ServerKind::Other,
    }
}

fn client_kind(t: &[u8]) -> ClientKind {
    match t {
        b"session.update" => ClientKind::SessionUpdate,
        b"input_audio_buffer.append" => ClientKind::AudioAppend,
        b"conversation.item.create" => ClientKind::ItemCreate,
        _ => ClientKind::Other,
    }
}

/// Classifies an event from upstream. No allocation unless the walk cannot read the object
/// (escaped keys), when the parser finds `type` instead.
pub fn peek_server(raw: &[u8]) -> Peek<'_, ServerKind> {
    peek(raw, server_kind, b"delta", |k| {
        matches!(k, ServerKind::AudioDelta | ServerKind::TextDelta)
    })
}

/// Classifies a client event (see [`peek_server`]).
pub fn peek_client(raw: &[u8]) -> Peek<'_, ClientKind> {
    peek(raw, client_kind, b"audio", |k| {
        *k == ClientKind::AudioAppend
    })
}

fn peek<'a, K: Copy>(
    raw: &'a [u8],
    kind_of: fn(&[u8]) -> K,
    payload_key: &[u8],
    wants_payload: fn(&K) -> bool,
) -> Peek<'a, K> {
    let mut kind = None;
    let mut payload: &[u8] = &[];
    let mut walk = fields(raw);
    for (key, value) in walk.by_ref() {
        if key == b"type" {
            let k = kind_of(string_body(value));
            if !wants_payload(&k) {
                return Peek {
                    kind: k,
                    payload: &[],
                };
            }
            kind = Some(k);
            if !payload.is_empty() {
                break;
            }
        } else if key == payload_key {
            payload = string_body(value);
            if kind.is_some() {
                break;
            }
        }
    }
    let kind = match kind {
        Some(k) => k,
        None if walk.complete() => kind_of(b""),
        None => {
            let t = sonic_rs::get_from_slice(raw, ["type"])
                .ok()
                .and_then(|v| sonic_rs::JsonValueTrait::as_str(&v).map(str::to_owned))
                .unwrap_or_default();
            kind_of(t.as_bytes())
        }
    };
    Peek { kind, payload }
}

/// The bytes between a JSON string's quotes (empty for anything else).
fn string_body(raw: &[u8]) -> &[u8] {
    raw.strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .unwrap_or(&[])
}

/// Bytes of audio a base64 payload decodes to (padding and whitespace-free base64, as the API
/// sends it; JSON escapes are not expected in base64).
pub fn base64_decoded_len(b64: &[u8]) -> u64 {
    let pad = b64.iter().rev().take(2).filter(|b| **b == b'=').count();
    ((b64.len() / 4) * 3 + (b64.len() % 4).saturating_sub(1)).saturating_sub(pad) as u64
}

/// An audio format, as far as its byte rate goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    /// 16-bit mono PCM at this sample rate (`pcm16` is 24 kHz).
    Pcm16 {
        /// Samples per second.
        rate: u32,
    },
    /// G.711 µ-law or A-law, 8 kHz, one byte per sample.
    G711,
}

impl Default for AudioFormat {
    fn default() -> Self {
        AudioFormat::Pcm16 { rate: 24_000 }
    }
}

impl AudioFormat {
    /// Bytes per second of audio.
    pub fn bytes_per_sec(self) -> u64 {
        match self {
            AudioFormat::Pcm16 { rate } => u64::from(rate.max(1)) * 2,
            AudioFormat::G711 => 8_000,
        }
    }

    /// Reads a beta format name (`pcm16`, `g711_ulaw`, `g711_alaw`).
    fn from_beta(name: &str) -> Option<AudioFormat> {
        match name {
            "pcm16" => Some(AudioFormat::default()),
            "g711_ulaw" | "g711_alaw" => Some(AudioFormat::G711),
            _ => None,
        }
    }

    /// Reads a GA format object (`{"type":"audio/pcm","rate":24000}`, `audio/pcmu`, `audio/pcma`).
    fn from_ga(f: &GaFormat) -> Option<AudioFormat> {
        match f.kind.as_deref()? {
            "audio/pcm" => Some(AudioFormat::Pcm16 {
                rate: f.rate.unwrap_or(24_000),
            }),
            "audio/pcmu" | "audio/pcma" => Some(AudioFormat::G711),
            _ => None,
        }
    }
}

#[derive(Deserialize, Default)]
struct GaFormat {
    #[serde(rename = "type")]
    kind: Option<String>,
    rate: Option<u32>,
}

#[derive(Deserialize, Default)]
struct GaDirection {
    format: Option<GaFormat>,
}

#[derive(Deserialize, Default)]
struct GaAudio {
    input: Option<GaDirection>,
    output: Option<GaDirection>,
}

/// The fields of a `session` object the gateway reads (GA and beta shapes).
#[derive(Deserialize, Default)]
struct SessionObject<'a> {
    id: Option<String>,
    input_audio_format: Option<String>,
    output_audio_format: Option<String>,
    audio: Option<GaAudio>,
    instructions: Option<String>,
    #[serde(borrow)]
    tools: Option<sonic_rs::LazyValue<'a>>,
}

#[derive(Deserialize)]
struct SessionEvent<'a> {
    #[serde(borrow)]
    session: Option<SessionObject<'a>>,
}

/// What a `session.created` / `session.updated` (from upstream) or `session.update` (from the
/// client) says; every field is absent when the event did not set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFacts {
    /// The session id (`sess_…`).
    pub id: Option<String>,
    /// Format of the client's audio.
    pub input_format: Option<AudioFormat>,
    /// Format of the model's audio.
    pub output_format: Option<AudioFormat>,
    /// Bytes of `instructions` text.
    pub instructions_bytes: Option<u64>,
    /// Bytes of the `tools` array's JSON.
    pub tools_bytes: Option<u64>,
}

impl SessionFacts {
    /// Reads the `session` object of a session event. `None` when the event is not JSON.
    pub fn read(raw: &[u8]) -> Option<SessionFacts> {
        let event: SessionEvent<'_> = sonic_rs::from_slice(raw).ok()?;
        let s = event.session.unwrap_or_default();
        let audio = s.audio.unwrap_or_default();
        let ga = |d: Option<GaDirection>| {
            d.and_then(|d| d.format)
                .and_then(|f| AudioFormat::from_ga(&f))
        };
        Some(SessionFacts {
            id: s.id,
            input_format: ga(audio.input).or_else(|| {
                s.input_audio_format
                    .as_deref()
                    .and_then(AudioFormat::from_beta)
            }),
            output_format: ga(audio.output).or_else(|| {
                s.output_audio_format
                    .as_deref()
                    .and_then(AudioFormat::from_beta)
            }),
            instructions_bytes: s.instructions.map(|i| i.len() as u64),
            tools_bytes: s.tools.map(|t| tools_len(t.as_raw_str())),
        })
    }
}

/// Bytes of a `tools` array's JSON; an empty array defines nothing.
fn tools_len(raw: &str) -> u64 {
    let inner = raw.trim().trim_start_matches('[').trim_end_matches(']');
    if inner.trim().is_empty() {
        0
    } else {
        raw.len() as u64
    }
}

/// Token counts of one realtime response, by modality: what `response.done` reports (or what
/// the gateway estimated when it reported nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealtimeTokens {
    /// Input tokens, all modalities, cached included.
    pub input_tokens: u64,
    /// Output tokens, all modalities.
    pub output_tokens: u64,
    /// What upstream reports as the total.
    pub total_tokens: u64,
    /// Input tokens served from cache.
    pub cached_tokens: u64,
    /// Input text tokens.
    pub input_text_tokens: u64,
    /// Input audio tokens.
    pub input_audio_tokens: u64,
    /// Output text tokens.
    pub output_text_tokens: u64,
    /// Output audio tokens.
    pub output_audio_tokens: u64,
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    text_tokens: u64,
    #[serde(default)]
    audio_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize)]
struct UsageObject {
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: Option<u64>,
    input_token_details: Option<Details>,
    output_token_details: Option<Details>,
}

#[derive(Deserialize)]
struct DoneResponse {
    id: Option<String>,
    status: Option<String>,
    usage: Option<UsageObject>,
}

#[derive(Deserialize)]
struct DoneEvent {
    response: Option<DoneResponse>,
}

/// What a `response.done` (or `response.created`) says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    /// `response.id`.
    pub id: Option<String>,
    /// `response.status` (`completed`, `cancelled`, `failed`, `incomplete`).
    pub status: Option<String>,
    /// `response.usage`, when present and well-formed.
    pub usage: Option<RealtimeTokens>,
}

impl ResponseFacts {
    /// Reads a `response.*` lifecycle event. `None` when it is not JSON.
    pub fn read(raw: &[u8]) -> Option<ResponseFacts> {
        let event: DoneEvent = sonic_rs::from_slice(raw).ok()?;
        let Some(r) = event.response else {
            return Some(ResponseFacts::default());
        };
        let usage = r.usage.map(|u| {
            let input = u.input_token_details.unwrap_or_default();
            let output = u.output_token_details.unwrap_or_default();
            RealtimeTokens {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                total_tokens: u.total_tokens.unwrap_or(u.input_tokens + u.output_tokens),
                cached_tokens: input.cached_tokens,
                input_text_tokens: input.text_tokens,
                input_audio_tokens: input.audio_tokens,
                output_text_tokens: output.text_tokens,
                output_audio_tokens: output.audio_tokens,
            }
        });
        Some(ResponseFacts {
            id: r.id,
            status: r.status,
            usage,
        })
    }
}

#[derive(Deserialize)]
struct ContentPart {
    text: Option<String>,
    transcript: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    content: Option<Vec<ContentPart>>,
    output: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ItemEvent {
    item: Option<Item>,
}

/// Bytes of text a `conversation.item.create` puts into the conversation (message text parts,
/// a function call's arguments or output). 0 when it is not JSON.
pub fn item_text_bytes(raw: &[u8]) -> u64 {
    let Ok(ItemEvent { item: Some(item) }) = sonic_rs::from_slice::<ItemEvent>(raw) else {
        return 0;
    };
    let parts: u64 = item
        .content
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let text = p.text.as_deref().or(p.transcript.as_deref()).unwrap_or("");
            text.len() as u64
        })
        .sum();
    parts + item.output.map_or(0, |o| o.len() as u64) + item.arguments.map_or(0, |a| a.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_both_interfaces_and_finds_payloads() {
        let ga = br#"{"type":"response.output_audio.delta","event_id":"e1","response_id":"r","item_id":"i","output_index":0,"content_index":0,"delta":"AAAA"}"#;
        let p = peek_server(ga);
        assert_eq!(p.kind, ServerKind::AudioDelta);
        assert_eq!(p.payload, b"AAAA");
        let beta = br#"{"delta":"QUJD","type":"response.audio.delta"}"#;
        let p = peek_server(beta);
        assert_eq!((p.kind, p.payload), (ServerKind::AudioDelta, &b"QUJD"[..]));
        let t = br#"{"type":"response.output_audio_transcript.delta","delta":"hi there"}"#;
        assert_eq!(peek_server(t).kind, ServerKind::TextDelta);
        assert_eq!(peek_server(t).payload, b"hi there");
        assert_eq!(
            peek_server(br#"{"type":"response.done","response":{}}"#).kind,
            ServerKind::ResponseDone
        );
        assert_eq!(
            peek_server(br#"{"type":"conversation.item.added"}"#).kind,
            ServerKind::Other
        );
        let escaped = br#"{"t\u0079pe":"session.created"}"#;
        assert_eq!(peek_server(escaped).kind, ServerKind::SessionCreated);
        let append = br#"{"type":"input_audio_buffer.append","audio":"AAAAAA=="}"#;
        let p = peek_client(append);
        assert_eq!(
            (p.kind, p.payload),
            (ClientKind::AudioAppend, &b"AAAAAA=="[..])
        );
    }

    #[test]
    fn base64_lengths() {
        assert_eq!(base64_decoded_len(b"AAAA"), 3);
        assert_eq!(base64_decoded_len(b"AAAAAA=="), 4);
        assert_eq!(base64_decoded_len(b"AAAAAAA="), 5);
        assert_eq!(base64_decoded_len(b""), 0);
    }

    #[test]
    fn reads_session_formats_in_both_shapes() {
        let ga = br#"{"type":"session.created","session":{"id":"sess_1","type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcm","rate":16000}}},"instructions":"be brief","tools":[{"type":"function","name":"f"}]}}"#;
        let f = SessionFacts::read(ga).unwrap();
        assert_eq!(f.id.as_deref(), Some("sess_1"));
        assert_eq!(f.input_format, Some(AudioFormat::G711));
        assert_eq!(f.output_format, Some(AudioFormat::Pcm16 { rate: 16_000 }));
        assert_eq!(f.instructions_bytes, Some(8));
        assert_eq!(f.tools_bytes, Some(32));
        let beta = br#"{"type":"session.updated","session":{"input_audio_format":"g711_alaw","output_audio_format":"pcm16"}}"#;
        let f = SessionFacts::read(beta).unwrap();
        assert_eq!(f.input_format, Some(AudioFormat::G711));
        assert_eq!(f.output_format, Some(AudioFormat::Pcm16 { rate: 24_000 }));
        assert_eq!(f.tools_bytes, None);
        let empty = br#"{"type":"session.created","session":{"tools":[ ]}}"#;
        assert_eq!(SessionFacts::read(empty).unwrap().tools_bytes, Some(0));
    }

    #[test]
    fn reads_response_done_usage_or_its_absence() {
        let done = br#"{"type":"response.done","response":{"id":"resp_1","status":"completed","usage":{"total_tokens":60,"input_tokens":40,"output_tokens":20,"input_token_details":{"text_tokens":10,"audio_tokens":30,"cached_tokens":8},"output_token_details":{"text_tokens":5,"audio_tokens":15}}}}"#;
        let f = ResponseFacts::read(done).unwrap();
        assert_eq!(f.id.as_deref(), Some("resp_1"));
        assert_eq!(
            f.usage,
            Some(RealtimeTokens {
                input_tokens: 40,
                output_tokens: 20,
                total_tokens: 60,
                cached_tokens: 8,
                input_text_tokens: 10,
                input_audio_tokens: 30,
                output_text_tokens: 5,
                output_audio_tokens: 15,
            })
        );
        let bare = br#"{"type":"response.done","response":{"id":"resp_2","status":"completed","usage":null}}"#;
        assert_eq!(ResponseFacts::read(bare).unwrap().usage, None);
    }

    #[test]
    fn counts_item_text() {
        let item = br#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hello"}]}}"#;
        assert_eq!(item_text_bytes(item), 5);
        let out = br#"{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c","output":"{\"t\":1}"}}"#;
        assert_eq!(item_text_bytes(out), 7);
    }
}
