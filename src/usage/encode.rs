//! A usage record's JSON line, written straight into the sink's buffer.
//!
//! The bytes are exactly those serde's derive gives through `sonic_rs::to_string` (field order,
//! flattened token counts, `null` for a missing TTFT, the realtime fields only when present,
//! the same string escapes), so records written before and after stay one format; a test
//! checks every field and every escape against that encoding. Writing by hand skips the
//! flattened map serde builds for this struct and the `String` per record.

use super::{RealtimeUsage, RequestType, UsageRecord};
use crate::protocol::string_block::{quote_backslash_or_control, BLOCK};

/// `,"name":` as one constant (names are plain ASCII: nothing to escape), so that a field's
/// key is one append.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// `,"name":"`: a string field's key and its value's opening quote, one append.
macro_rules! string_key {
    ($name:literal) => {
        concat!(key!($name), "\"")
    };
}

/// Appends `rec` as one line of JSON (no newline) to `out`.
pub fn write_record(out: &mut String, rec: &UsageRecord) {
    let u = &rec.usage;
    out.push_str("{\"response_id\":\"");
    string_body(out, &rec.response_id);
    out.push('"');
    uint_field(out, key!("ts_ms"), rec.ts_ms);
    string_field(out, string_key!("group"), &rec.group);
    string_field(out, string_key!("key_id"), &rec.key_id);
    string_field(out, string_key!("account"), &rec.account);
    string_field(out, string_key!("model"), &rec.model);
    out.push_str(request_type(rec.request_type));
    uint_field(out, key!("input_tokens"), u.input_tokens);
    uint_field(out, key!("cached_tokens"), u.cached_tokens);
    uint_field(out, key!("output_tokens"), u.output_tokens);
    uint_field(out, key!("reasoning_tokens"), u.reasoning_tokens);
    uint_field(out, key!("total_tokens"), u.total_tokens);
    match rec.ttft_us {
        Some(us) => uint_field(out, key!("ttft_us"), us),
        None => out.push_str(concat!(key!("ttft_us"), "null")),
    }
    uint_field(out, key!("duration_us"), rec.duration_us);
    uint_field(out, key!("attempts"), u64::from(rec.attempts));
    string_field(out, string_key!("status"), &rec.status);
    string_field(out, string_key!("instance"), &rec.instance);
    uint_field(out, key!("shard"), rec.shard as u64);
    if let Some(rt) = &rec.realtime {
        realtime(out, rt);
    }
    out.push('}');
}

/// The `request_type` field as one constant: its values are plain ASCII names.
fn request_type(t: RequestType) -> &'static str {
    macro_rules! field {
        ($value:literal) => {
            concat!(string_key!("request_type"), $value, "\"")
        };
    }
    match t {
        RequestType::Ws => field!("ws"),
        RequestType::Stream => field!("stream"),
        RequestType::Sync => field!("sync"),
        RequestType::Realtime => field!("realtime"),
    }
}

fn realtime(out: &mut String, rt: &RealtimeUsage) {
    string_field(out, string_key!("session_id"), &rt.session_id);
    uint_field(out, key!("input_text_tokens"), rt.input_text_tokens);
    uint_field(out, key!("input_audio_tokens"), rt.input_audio_tokens);
    uint_field(out, key!("output_text_tokens"), rt.output_text_tokens);
    uint_field(out, key!("output_audio_tokens"), rt.output_audio_tokens);
    out.push_str(if rt.estimated {
        concat!(key!("estimated"), "true")
    } else {
        concat!(key!("estimated"), "false")
    });
}

/// `key` (from [`key!`]) and the number.
fn uint_field(out: &mut String, key: &str, v: u64) {
    out.push_str(key);
    out.push_str(itoa::Buffer::new().format(v));
}

/// `key` (from [`string_key!`], the opening quote included), the string and its closing quote.
fn string_field(out: &mut String, key: &str, v: &str) {
    out.push_str(key);
    string_body(out, v);
    out.push('"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The escape of byte `b` in a JSON string: a short one (`\"`, `\n`, ...), `""` for a control
/// character written as `\u00XX`; `None` when `b` goes as it is.
fn escape(b: u8) -> Option<&'static str> {
    Some(match b {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        0x08 => "\\b",
        0x09 => "\\t",
        0x0a => "\\n",
        0x0c => "\\f",
        0x0d => "\\r",
        0x00..=0x1f => "",
        _ => return None,
    })
}

/// `s` as the inside of a JSON string (no quotes): `"` and `\` escaped, control characters as
/// `\b \t \n \f \r` or `\u00XX`, everything else (non-ASCII included) as it is. A string
/// with nothing to escape (ids, names: almost every one) is one look at its blocks
/// ([`plain`]) and one append; else runs without escapes are copied whole; they end where
/// [`next_escape`] finds a byte to escape.
fn string_body(out: &mut String, s: &str) {
    if plain(s.as_bytes()) {
        out.push_str(s);
        return;
    }
    let bytes = s.as_bytes();
    let (mut start, mut from) = (0, 0);
    while let Some(i) = next_escape(bytes, from) {
        let b = bytes[i];
        if let Some(short) = escape(b) {
            // Escaped bytes are ASCII, so `i` and `i + 1` are character boundaries.
            out.push_str(&s[start..i]);
            if short.is_empty() {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            } else {
                out.push_str(short);
            }
            start = i + 1;
        }
        from = i + 1;
    }
    out.push_str(&s[start..]);
}

/// `true` when no byte of `bytes` needs an escape: every whole block and the last bytes
/// ([`last_stops`]) searched, their stops or-ed, one branch at the end.
fn plain(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(BLOCK);
    let mut stops = 0;
    for block in blocks.by_ref() {
        stops |= block
            .first_chunk::<BLOCK>()
            .map_or(1, quote_backslash_or_control);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        stops |= last_stops(bytes, bytes.len() - rest.len());
    }
    stops == 0
}

/// The first byte at or after `from` that a JSON string must escape (`"`, `\`, below 0x20),
/// found a block at a time by the JSON scan's own search ([`quote_backslash_or_control`]: the
/// bytes a JSON string must escape are the bytes a strict scan stops at); the last bytes, fewer
/// than a block, as one block too ([`last_stops`]).
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(block) = bytes.get(i..).and_then(|b| b.first_chunk::<BLOCK>()) {
        let stops = quote_backslash_or_control(block);
        if stops != 0 {
            return Some(i + stops.trailing_zeros() as usize);
        }
        i += BLOCK;
    }
    if i >= bytes.len() {
        return None;
    }
    let stops = last_stops(bytes, i);
    (stops != 0).then(|| i + stops.trailing_zeros() as usize)
}

/// The stops ([`quote_backslash_or_control`]) of the last bytes of `bytes`, from `from` (fewer
/// than a block), bit 0 for the byte at `from`: looked at as the block that ends with them when
/// `bytes` is that long (the bytes before `from` shifted out), else as a copy padded with
/// spaces (never an escape), so no byte is looked at alone.
fn last_stops(bytes: &[u8], from: usize) -> u32 {
    match bytes.len().checked_sub(BLOCK) {
        Some(last) => bytes[last..].first_chunk::<BLOCK>().map_or(1, |block| {
            quote_backslash_or_control(block) >> (from - last)
        }),
        None => quote_backslash_or_control(&padded(&bytes[from..])),
    }
}

/// `rest` (fewer than [`BLOCK`] bytes) at the start of a block of spaces. Copied as two
/// overlapping pieces of a fixed size (8, 4, 2 or 1 bytes), not by a `memcpy` call of any length.
fn padded(rest: &[u8]) -> [u8; BLOCK] {
    let mut block = [b' '; BLOCK];
    let n = rest.len().min(BLOCK);
    let mut copy = |size: usize| {
        block[..size].copy_from_slice(&rest[..size]);
        block[n - size..n].copy_from_slice(&rest[n - size..n]);
    };
    match n {
        8.. => copy(8),
        4.. => copy(4),
        2.. => copy(2),
        1 => copy(1),
        0 => {}
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Usage;
    use crate::usage::RequestType;

    fn full() -> UsageRecord {
        UsageRecord {
            response_id: "resp_\"q\"\\back\u{1}\n\t\u{1f}é✓".into(),
            ts_ms: 1_763_900_000_123,
            group: "grp/\u{7f}\u{8}\u{c}\r".into(),
            key_id: "key-1".into(),
            account: "acct-0".into(),
            model: "gpt-5-codex".into(),
            request_type: RequestType::Realtime,
            usage: Usage {
                input_tokens: 28411,
                cached_tokens: 27648,
                output_tokens: 412,
                reasoning_tokens: 256,
                total_tokens: u64::MAX,
            },
            ttft_us: Some(1834),
            duration_us: 5_210_000,
            attempts: u32::MAX,
            status: "completed".into(),
            instance: "gw-1".into(),
            shard: 3,
            realtime: Some(RealtimeUsage {
                session_id: "sess_1".into(),
                input_text_tokens: 1,
                input_audio_tokens: 2,
                output_text_tokens: 3,
                output_audio_tokens: 4,
                estimated: true,
            }),
        }
    }

    fn line(rec: &UsageRecord) -> String {
        let mut out = String::new();
        write_record(&mut out, rec);
        out
    }

    #[test]
    fn a_record_with_every_field_is_this_exact_line() {
        assert_eq!(
            line(&full()),
            concat!(
                r#"{"response_id":"resp_\"q\"\\back\u0001\n\t\u001fé✓","ts_ms":1763900000123,"#,
                r#""group":"grp/"#,
                "\u{7f}",
                r#"\b\f\r","key_id":"key-1","account":"acct-0","model":"gpt-5-codex","#,
                r#""request_type":"realtime","input_tokens":28411,"cached_tokens":27648,"#,
                r#""output_tokens":412,"reasoning_tokens":256,"total_tokens":18446744073709551615,"#,
                r#""ttft_us":1834,"duration_us":5210000,"attempts":4294967295,"status":"completed","#,
                r#""instance":"gw-1","shard":3,"session_id":"sess_1","input_text_tokens":1,"#,
                r#""input_audio_tokens":2,"output_text_tokens":3,"output_audio_tokens":4,"#,
                r#""estimated":true}"#
            )
        );
    }

    #[test]
    fn matches_the_serde_encoding_for_every_shape_and_character() {
        let mut recs = vec![full(), UsageRecord::sample("resp_1")];
        let mut rec = full();
        rec.ttft_us = None;
        rec.realtime = None;
        rec.request_type = RequestType::Stream;
        recs.push(rec);
        let mut rec = full();
        if let Some(rt) = rec.realtime.as_mut() {
            rt.estimated = false;
        }
        rec.request_type = RequestType::Sync;
        recs.push(rec);
        // Every ASCII character, alone and between others, in every string field.
        for c in (0u8..0x80).map(char::from).chain(['é', '\u{2028}', '😀']) {
            let mut rec = UsageRecord::sample(format!("{c}"));
            rec.group = format!("a{c}b").into();
            rec.key_id = format!("{c}{c}").into();
            rec.model = format!("m{c}").into();
            rec.status = format!("{c}x").into();
            rec.instance = c.to_string().into();
            rec.account = format!("{c}acct{c}").into();
            recs.push(rec);
        }
        for rec in &recs {
            let want = sonic_rs::to_string(rec).unwrap();
            assert_eq!(line(rec), want);
            let back: UsageRecord = sonic_rs::from_str(&line(rec)).unwrap();
            assert_eq!(&back, rec);
        }
    }

    /// Serde's encoding of `s` as a JSON string, the reference.
    fn reference(s: &str) -> String {
        sonic_rs::to_string(s).unwrap()
    }

    fn encoded(s: &str) -> String {
        let mut out = String::from('"');
        string_body(&mut out, s);
        out.push('"');
        out
    }

    #[test]
    fn plain_is_true_exactly_when_no_byte_needs_an_escape() {
        // Every byte value at every offset of strings of 0..64 bytes (whole blocks, the
        // block that ends the string, the padded copy of a short one), in a background of
        // plain bytes near the escaped range's edges.
        for background in [b'a', b' ', b'~', b'!', b'#', 0x7f, 0xc3] {
            for len in 0..=64 {
                let base = vec![background; len];
                assert!(plain(&base), "{background} x {len}");
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut bytes = base.clone();
                        bytes[at] = b;
                        let want = escape(b).is_none();
                        assert_eq!(plain(&bytes), want, "{b:#x} at {at} of {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_character_at_every_offset_of_every_length_is_escaped_as_serde_does() {
        // Block by block scanning: each character alone in a run of plain ones, at every offset
        // of strings up to four blocks long (the last bytes looked at in a padded copy or in
        // the block that ends the string), in runs of plain characters near the edges of
        // the escaped range (space, tilde) and of non-ASCII ones.
        let chars: Vec<char> = (0u8..0x80)
            .map(char::from)
            .chain(['é', '\u{80}', '\u{7ff}', '\u{2028}', '😀'])
            .collect();
        for plain in ['a', ' ', '~', '!', '#', '[', ']', 'ÿ'] {
            for len in 0..=64 {
                let background: Vec<char> = std::iter::repeat_n(plain, len).collect();
                assert_eq!(
                    encoded(&background.iter().collect::<String>()),
                    reference(&background.iter().collect::<String>())
                );
                for at in 0..len {
                    for &c in &chars {
                        let mut text = background.clone();
                        text[at] = c;
                        let text: String = text.into_iter().collect();
                        assert_eq!(encoded(&text), reference(&text), "{c:?} at {at} of {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn two_escapes_in_one_word_or_across_words_are_both_written() {
        for len in 2..=48 {
            for a in 0..len {
                for b in a + 1..len {
                    for (x, y) in [('"', '\\'), ('\n', '\u{1}'), ('\u{1f}', '"')] {
                        let mut text: Vec<char> = std::iter::repeat_n('k', len).collect();
                        text[a] = x;
                        text[b] = y;
                        let text: String = text.into_iter().collect();
                        assert_eq!(encoded(&text), reference(&text), "{a} {b} of {len}");
                    }
                }
            }
        }
    }
}
