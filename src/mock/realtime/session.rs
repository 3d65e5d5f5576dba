//! One Realtime session's state: its settings (either API shape), what it has received since its
//! last response, and its event ids.

use sonic_rs::{json, JsonContainerTrait, JsonValueTrait, Value};

use super::plan::Plan;
use crate::mock::events::random_alnum;

/// One session's state.
pub(super) struct Session {
    pub(super) beta: bool,
    pub(super) id: String,
    pub(super) model: String,
    pub(super) instructions: String,
    pub(super) tools: Value,
    pub(super) output_modalities: Vec<String>,
    pub(super) input_format: Value,
    pub(super) output_format: Value,
    /// Bytes of input text since the last response.
    pub(super) input_text_bytes: u64,
    /// Bytes of input audio appended and not committed yet.
    pub(super) buffered_audio: u64,
    /// Bytes of committed input audio since the last response.
    pub(super) input_audio_bytes: u64,
    pub(super) responses: u64,
    pub(super) plan: Plan,
    /// The next event id.
    pub(super) events: u64,
}

impl Session {
    pub(super) fn new(beta: bool, model: String) -> Session {
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

    pub(super) fn event_id(&mut self) -> String {
        self.events += 1;
        format!("event_{}_{}", self.id, self.events)
    }

    /// Bytes per second of the output audio format.
    pub(super) fn output_rate(&self) -> u64 {
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

    pub(super) fn input_rate(&self) -> u64 {
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
    pub(super) fn object(&self) -> Value {
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
    pub(super) fn update(&mut self, s: &Value) {
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
