//! Token usage, read from `response.completed` only.

use serde::{Deserialize, Serialize};
use sonic_rs::JsonValueTrait;

use super::fields::{fields, plain_u64};

/// Token counts of one turn: what billing is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Prompt tokens served from cache.
    pub cached_tokens: u64,
    /// Completion tokens, reasoning included.
    pub output_tokens: u64,
    /// Completion tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// What upstream reports as the total.
    pub total_tokens: u64,
}

impl Usage {
    /// Reads a usage object (`response.usage`, raw JSON). Returns `None` when it is not an
    /// object or its required counts are not non-negative integers: a wrong record is worse
    /// than a counted failure. Upstream's own form is matched as bytes ([`compact`]); any
    /// other is walked without allocating ([`fields`]), and an object the walk does not handle
    /// (escaped keys) is read with the parser instead. Public for the fuzz targets (`fuzz/`).
    pub fn from_raw(raw: &[u8]) -> Option<Usage> {
        compact(raw).or_else(|| walked(raw))
    }
}

/// Usage read field by field: walked, or parsed when the walk does not handle the object.
fn walked(raw: &[u8]) -> Option<Usage> {
    let mut walk = fields(raw);
    let mut reader = Reader::default();
    for (key, value) in walk.by_ref() {
        reader.field(key, value)?;
    }
    if walk.complete() {
        return reader.finish();
    }
    let mut reader = Reader::default();
    for item in sonic_rs::to_object_iter(raw) {
        let (key, value) = item.ok()?;
        reader.field(key.as_bytes(), value.as_raw_str().as_bytes())?;
    }
    reader.finish()
}

/// The usage object as upstream writes it (these keys in this order, no whitespace, every
/// count plain digits), read by matching its bytes instead of walking its fields: the walk
/// stepped over both details objects, then walked each again for its count (~2.3k
/// instructions per terminal event, callgrind). `None` for anything else, which the walk reads;
/// where this answers, the walk gives the same counts (each key once, every count a number).
fn compact(raw: &[u8]) -> Option<Usage> {
    let mut rest = raw;
    let input_tokens = count_after(&mut rest, b"{\"input_tokens\":")?;
    let cached_tokens = count_after(&mut rest, b",\"input_tokens_details\":{\"cached_tokens\":")?;
    let output_tokens = count_after(&mut rest, b"},\"output_tokens\":")?;
    let reasoning_tokens = count_after(
        &mut rest,
        b",\"output_tokens_details\":{\"reasoning_tokens\":",
    )?;
    let total_tokens = count_after(&mut rest, b"},\"total_tokens\":")?;
    (rest == b"}").then_some(Usage {
        input_tokens,
        cached_tokens,
        output_tokens,
        reasoning_tokens,
        total_tokens,
    })
}

/// The count after `prefix` at the start of `rest` (its digits, as [`plain_u64`] reads them);
/// `rest` moves past both. `None` when `prefix` is not there or no count follows it.
fn count_after(rest: &mut &[u8], prefix: &[u8]) -> Option<u64> {
    let after = rest.strip_prefix(prefix)?;
    let digits = after
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(after.len());
    let (count, after) = after.split_at(digits);
    *rest = after;
    plain_u64(count)
}

/// Usage being read field by field.
#[derive(Default)]
struct Reader {
    usage: Usage,
    have_in: bool,
    have_out: bool,
    have_total: bool,
}

impl Reader {
    /// Takes one field; `None` when a required count is not a number.
    fn field(&mut self, key: &[u8], value: &[u8]) -> Option<()> {
        let u = &mut self.usage;
        match key {
            b"input_tokens" | b"prompt_tokens" => {
                u.input_tokens = plain_u64(value)?;
                self.have_in = true;
            }
            b"output_tokens" | b"completion_tokens" => {
                u.output_tokens = plain_u64(value)?;
                self.have_out = true;
            }
            b"total_tokens" => {
                u.total_tokens = plain_u64(value)?;
                self.have_total = true;
            }
            b"input_tokens_details" | b"prompt_tokens_details" => {
                if let Some(c) = detail(value, b"cached_tokens") {
                    u.cached_tokens = c;
                }
            }
            b"output_tokens_details" | b"completion_tokens_details" => {
                if let Some(r) = detail(value, b"reasoning_tokens") {
                    u.reasoning_tokens = r;
                }
            }
            _ => {}
        }
        Some(())
    }

    fn finish(self) -> Option<Usage> {
        if !(self.have_in && self.have_out) {
            return None;
        }
        let mut u = self.usage;
        if !self.have_total {
            // Counts come from upstream: a sum past u64 must not wrap (or panic in debug).
            u.total_tokens = u.input_tokens.saturating_add(u.output_tokens);
        }
        Some(u)
    }
}

/// A count inside a details object: present and a number, else 0; `None` when absent.
fn detail(object: &[u8], name: &[u8]) -> Option<u64> {
    match fields(object).find(|(key, _)| *key == name) {
        Some((_, value)) => Some(plain_u64(value).unwrap_or(0)),
        None => sonic_rs::get_from_slice(object, [std::str::from_utf8(name).ok()?])
            .ok()
            .map(|v| v.as_u64().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counts_and_details_walked_or_parsed() {
        let walked = br#"{"input_tokens":120,"input_tokens_details":{"cached_tokens":100},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":12}}"#;
        let want = Usage {
            input_tokens: 120,
            cached_tokens: 100,
            output_tokens: 30,
            reasoning_tokens: 12,
            total_tokens: 150,
        };
        assert_eq!(Usage::from_raw(walked), Some(want));
        // An escaped key stops the walk: the parser reads the same object.
        let escaped = br#"{"input_t\u006fkens":120,"input_tokens_details":{"cached_tokens":100},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":150}"#;
        assert_eq!(Usage::from_raw(escaped), Some(want));
        let chat = br#"{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":null}}"#;
        assert_eq!(
            Usage::from_raw(chat),
            Some(Usage {
                input_tokens: 5,
                output_tokens: 2,
                total_tokens: 7,
                ..Usage::default()
            })
        );
        assert_eq!(Usage::from_raw(br#"{"input_tokens":1}"#), None);
        assert_eq!(
            Usage::from_raw(br#"{"input_tokens":-1,"output_tokens":1}"#),
            None
        );
        assert_eq!(Usage::from_raw(b"null"), None);
    }

    #[test]
    fn the_compact_form_reads_as_the_walk_reads_it() {
        let upstream = br#"{"input_tokens":120,"input_tokens_details":{"cached_tokens":100},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":150}"#;
        assert!(compact(upstream).is_some());
        assert_eq!(compact(upstream), walked(upstream));
        // Every cut of it, and every byte of it replaced (by a digit, a space, a quote, a
        // letter, a brace): the same answer as the walk wherever `compact` answers.
        for end in 0..=upstream.len() {
            let cut = &upstream[..end];
            assert_eq!(compact(cut).is_some(), end == upstream.len(), "{end}");
        }
        let mut answered = 0;
        for at in 0..upstream.len() {
            for b in [b'0', b'7', b' ', b'"', b'x', b'}', b'-', b'.', 0xff] {
                let mut raw = upstream.to_vec();
                raw[at] = b;
                if let Some(usage) = compact(&raw) {
                    answered += 1;
                    assert_eq!(
                        Some(usage),
                        walked(&raw),
                        "{}",
                        String::from_utf8_lossy(&raw)
                    );
                }
            }
            let mut raw = upstream.to_vec();
            raw.insert(at, b' ');
            assert_eq!(compact(&raw), None, "a space at {at}");
            let mut raw = upstream.to_vec();
            raw.remove(at);
            if let Some(usage) = compact(&raw) {
                assert_eq!(Some(usage), walked(&raw), "{at} removed");
            }
        }
        assert!(answered > 0);
        // Counts of every width, leading zeros, one past u64, empty.
        for count in [
            "0",
            "007",
            "18446744073709551615",
            "18446744073709551616",
            "",
        ] {
            for slot in 0..5 {
                let mut counts = ["1", "2", "3", "4", "5"];
                counts[slot] = count;
                let raw = format!(
                    r#"{{"input_tokens":{},"input_tokens_details":{{"cached_tokens":{}}},"output_tokens":{},"output_tokens_details":{{"reasoning_tokens":{}}},"total_tokens":{}}}"#,
                    counts[0], counts[1], counts[2], counts[3], counts[4]
                );
                let fits = !count.is_empty() && count.parse::<u64>().is_ok();
                assert_eq!(compact(raw.as_bytes()).is_some(), fits, "{raw}");
                assert_eq!(
                    Usage::from_raw(raw.as_bytes()),
                    walked(raw.as_bytes()),
                    "{raw}"
                );
            }
        }
    }

    #[test]
    fn a_total_past_u64_saturates() {
        // The upstream_event fuzz target's seed usage_overflow: the derived total overflowed.
        let raw = br#"{"input_tokens":18446744073709551615,"output_tokens":1}"#;
        assert_eq!(Usage::from_raw(raw).map(|u| u.total_tokens), Some(u64::MAX));
    }
}
