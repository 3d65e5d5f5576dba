//! A request's header lines in one buffer (names and values) and one list of spans: two
//! allocations per request whatever its header count, where a `String` and a `Vec` per header
//! made 31 for a Codex-shaped POST (`perf/README.md`, session 9; three buffers until session
//! 10).

use std::ops::Range;

/// Header lines in order, names lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Names (lower-cased, so UTF-8 as pushed) and values, each line's name then its value.
    bytes: Vec<u8>,
    spans: Vec<(Range<u32>, Range<u32>)>,
}

impl Headers {
    /// Empties it for the next request's lines, keeping both buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// Room for `count` more lines of `names` and `values` bytes in all.
    pub fn reserve(&mut self, count: usize, names: usize, values: usize) {
        self.bytes.reserve(names + values);
        self.spans.reserve(count);
    }

    /// Adds a line, its name lower-cased.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes[start..].make_ascii_lowercase();
        let n = span(start, name.len());
        let v = span(self.bytes.len(), value.len());
        self.bytes.extend_from_slice(value);
        self.spans.push((n, v));
    }

    /// The lines in order: lower-case name, value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.spans.iter().map(|(n, v)| {
            let name = self.bytes.get(usize_range(n)).unwrap_or_default();
            // SAFETY: a name's bytes are a `&str` pushed by `push`, ASCII lower-cased (which
            // keeps UTF-8 UTF-8), at a span `push` recorded: whole characters of UTF-8. Checked
            // again here, this was a visible share of a header lookup, made for every line a
            // lookup passes (`perf/README.md`, session 11).
            let name = unsafe { std::str::from_utf8_unchecked(name) };
            (name, self.bytes.get(usize_range(v)).unwrap_or_default())
        })
    }

    /// How many lines.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// `true` with no lines.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl<'a> FromIterator<(&'a str, &'a [u8])> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a [u8])>>(lines: I) -> Self {
        let mut headers = Headers::default();
        for (name, value) in lines {
            headers.push(name, value);
        }
        headers
    }
}

/// `len` bytes from `start`, as stored (a head is at most 32 KiB, so `u32` always holds it).
fn span(start: usize, len: usize) -> Range<u32> {
    let start = u32::try_from(start).unwrap_or(u32::MAX);
    start..start.saturating_add(u32::try_from(len).unwrap_or(u32::MAX))
}

fn usize_range(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_order_and_names_are_lower_cased() {
        let h: Headers = [("Host", &b"a"[..]), ("X-Key", b"V\xff"), ("host", b"")]
            .into_iter()
            .collect();
        let lines: Vec<_> = h.iter().collect();
        assert_eq!(
            lines,
            [("host", &b"a"[..]), ("x-key", b"V\xff"), ("host", b"")]
        );
        assert_eq!((h.len(), h.is_empty()), (3, false));
    }

    #[test]
    fn cleared_lines_leave_their_buffers_for_the_next_ones() {
        let mut h: Headers = [("Host", &b"a"[..]), ("X-Key", b"v")].into_iter().collect();
        let kept = (h.bytes.capacity(), h.spans.capacity());
        h.clear();
        assert!(h.is_empty());
        h.reserve(1, 4, 1);
        h.push("Host", b"b");
        assert_eq!(h.iter().collect::<Vec<_>>(), [("host", &b"b"[..])]);
        assert_eq!((h.bytes.capacity(), h.spans.capacity()), kept);
    }
}
