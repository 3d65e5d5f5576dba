//! Token estimates for realtime responses upstream reported no usage for (seed 004's fallback),
//! from what the relay saw: text from its byte length, audio from its duration in the session's
//! formats. Pure arithmetic on counters the relay bumps per event; nothing here allocates.
//!
//! The rules (documented in README "Realtime relay"):
//! - text: one token per 4 bytes (rounded up) of instructions, tool definitions (the JSON of
//!   the `tools` array), input items' text and output text/transcript/argument deltas;
//! - input audio: 10 tokens per second (one per 100 ms), output audio: 20 tokens per second
//!   (one per 50 ms), durations from the decoded byte counts and the session's
//!   `input_audio_format` / `output_audio_format` (GA: `audio.input|output.format`);
//! - instructions and tools count as input of every response (the model reads them each time).

use crate::protocol::realtime::{AudioFormat, RealtimeTokens};

/// Bytes of text per estimated token.
const TEXT_BYTES_PER_TOKEN: u64 = 4;
/// Input audio tokens per second.
const INPUT_AUDIO_TOKENS_PER_SEC: u64 = 10;
/// Output audio tokens per second.
const OUTPUT_AUDIO_TOKENS_PER_SEC: u64 = 20;

/// What one side of a response carried, as the relay counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Bytes of text.
    pub text_bytes: u64,
    /// Microseconds of audio.
    pub audio_us: u64,
}

impl Carried {
    /// `true` when nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Carried::default()
    }

    /// Adds `bytes` of audio in `format`.
    pub fn add_audio(&mut self, bytes: u64, format: AudioFormat) {
        self.audio_us = self
            .audio_us
            .saturating_add(bytes.saturating_mul(1_000_000) / format.bytes_per_sec());
    }

    /// Adds `bytes` of text.
    pub fn add_text(&mut self, bytes: u64) {
        self.text_bytes = self.text_bytes.saturating_add(bytes);
    }

    /// Both counts added.
    pub fn plus(self, other: Carried) -> Carried {
        Carried {
            text_bytes: self.text_bytes.saturating_add(other.text_bytes),
            audio_us: self.audio_us.saturating_add(other.audio_us),
        }
    }
}

/// Session settings that count as input of every response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Bytes of `instructions`.
    pub instructions_bytes: u64,
    /// Bytes of the `tools` array's JSON.
    pub tools_bytes: u64,
}

fn text_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(TEXT_BYTES_PER_TOKEN)
}

fn audio_tokens(us: u64, per_sec: u64) -> u64 {
    (us.saturating_mul(per_sec)).div_ceil(1_000_000)
}

/// The estimated tokens of a response whose input and output carried what is given.
pub fn estimate(standing: Standing, input: Carried, output: Carried) -> RealtimeTokens {
    let input_text_tokens = text_tokens(
        standing
            .instructions_bytes
            .saturating_add(standing.tools_bytes)
            .saturating_add(input.text_bytes),
    );
    let input_audio_tokens = audio_tokens(input.audio_us, INPUT_AUDIO_TOKENS_PER_SEC);
    let output_text_tokens = text_tokens(output.text_bytes);
    let output_audio_tokens = audio_tokens(output.audio_us, OUTPUT_AUDIO_TOKENS_PER_SEC);
    let input_tokens = input_text_tokens + input_audio_tokens;
    let output_tokens = output_text_tokens + output_audio_tokens;
    RealtimeTokens {
        input_tokens,
        output_tokens,
        total_tokens: input_tokens + output_tokens,
        cached_tokens: 0,
        input_text_tokens,
        input_audio_tokens,
        output_text_tokens,
        output_audio_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_by_bytes_audio_by_duration_in_the_session_format() {
        let mut input = Carried::default();
        input.add_text(10);
        // One second of 24 kHz PCM16, then one second of G.711.
        input.add_audio(48_000, AudioFormat::default());
        input.add_audio(8_000, AudioFormat::G711);
        let mut output = Carried::default();
        output.add_text(9);
        output.add_audio(24_000, AudioFormat::Pcm16 { rate: 24_000 });
        let standing = Standing {
            instructions_bytes: 7,
            tools_bytes: 100,
        };
        let t = estimate(standing, input, output);
        assert_eq!(t.input_text_tokens, 30, "(7 + 100 + 10) / 4, rounded up");
        assert_eq!(t.input_audio_tokens, 20, "two seconds at 10/s");
        assert_eq!(t.output_text_tokens, 3);
        assert_eq!(t.output_audio_tokens, 10, "half a second at 20/s");
        assert_eq!(
            (t.input_tokens, t.output_tokens, t.total_tokens),
            (50, 13, 63)
        );
        assert_eq!(
            estimate(Standing::default(), Carried::default(), Carried::default()),
            RealtimeTokens::default()
        );
    }
}
