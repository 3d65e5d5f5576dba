//! Server-sent events: framing for clients of `POST /v1/responses` with `"stream": true`, and an
//! incremental parser for SSE read from upstream (and by the load generator).
//!
//! The parser keeps one growing buffer; an event whose data is a single `data:` line (the shape
//! of every Responses API event) comes back as a slice of that buffer, not a copy.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes [`write_event`] writes for an event whose data is one line (every Responses API event):
/// `event: `, the type, `\n`, `data: `, the data, `\n`, `\n`.
pub fn record_len(event_type: &str, data: &[u8]) -> usize {
    event_type.len() + data.len() + 16
}

/// Writes one event as `event: <type>\ndata: <json>\n\n`. Data containing line breaks is split
/// over several `data:` lines, as the SSE format requires. Line breaks are looked for with
/// `memchr`, not byte by byte: an event (a `response.completed` of kilobytes) is one line, and a
/// per-byte split was the costliest step of an SSE client's relay (`perf/README.md`, session 9).
pub fn write_event(out: &mut Vec<u8>, event_type: &str, data: &[u8]) {
    out.reserve(record_len(event_type, data));
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event_type.as_bytes());
    out.push(b'\n');
    let mut rest = data;
    loop {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    out.push(b'\n');
}

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<Bytes>,
    /// The `data:` lines joined with `\n`.
    pub data: Bytes,
}

/// Why a stream is not valid SSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event grew past the limit without ending.
    #[error("server-sent event larger than {0} bytes")]
    TooLarge(usize),
}

/// An incremental SSE parser: feed bytes as they arrive, take events as they complete.
pub struct SseParser {
    buf: BytesMut,
    /// Bytes of `buf` already known not to hold an event boundary.
    scanned: usize,
    max_event_bytes: usize,
}

impl SseParser {
    /// A parser refusing events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            buf: BytesMut::with_capacity(8 * 1024),
            scanned: 0,
            max_event_bytes,
        }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes buffered but not yet returned as events.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, `None` when more bytes are needed. Comment-only blocks and
    /// blocks without data are skipped.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            let Some((end, skip)) = self.find_boundary() else {
                // Up to three buffered bytes may be the start of the blank line that ends the
                // event (`\r\n\r`): past that slack the event is surely over the limit.
                if self.buf.len() > self.max_event_bytes.saturating_add(3) {
                    return Err(SseError::TooLarge(self.max_event_bytes));
                }
                return Ok(None);
            };
            // Checked on complete events too: whether an event is refused must not depend on
            // how the stream was cut into reads.
            if end > self.max_event_bytes {
                return Err(SseError::TooLarge(self.max_event_bytes));
            }
            let block = self.buf.split_to(end).freeze();
            self.buf.advance(skip);
            self.scanned = 0;
            if let Some(ev) = parse_block(block) {
                return Ok(Some(ev));
            }
        }
    }

    /// Finds the first blank line: returns (end of the block, length of the separator).
    fn find_boundary(&mut self) -> Option<(usize, usize)> {
        let b = &self.buf[..];
        // Start three bytes back so a separator (up to `\r\n\r\n`) split over two feeds is
        // still seen.
        let mut i = self.scanned.saturating_sub(3);
        while let Some(off) = memchr_newline(&b[i..]) {
            let nl = i + off;
            let rest = &b[nl + 1..];
            if rest.starts_with(b"\n") {
                let end = if nl > 0 && b[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                return Some((end, nl + 2 - end));
            }
            if rest.starts_with(b"\r\n") {
                let end = if nl > 0 && b[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                return Some((end, nl + 3 - end));
            }
            i = nl + 1;
        }
        self.scanned = b.len();
        None
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn parse_block(block: Bytes) -> Option<SseEvent> {
    let mut event = None;
    // The first `data:` line is kept as a range into `block`; only a second one (rare: the
    // Responses API sends one JSON line per event) makes the data a joined copy.
    let mut first: Option<std::ops::Range<usize>> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut start = 0;
    while start <= block.len() {
        let end = block[start..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(block.len(), |p| start + p);
        let mut line_end = end;
        if line_end > start && block[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line = &block[start..line_end];
        if let Some(v) = field(line, b"data") {
            let range = start + (line.len() - v.len())..line_end;
            match (&first, &mut joined) {
                (None, _) => first = Some(range),
                (Some(f), None) => {
                    let mut j = Vec::with_capacity(block.len());
                    j.extend_from_slice(&block[f.clone()]);
                    j.push(b'\n');
                    j.extend_from_slice(&block[range]);
                    joined = Some(j);
                }
                (Some(_), Some(j)) => {
                    j.push(b'\n');
                    j.extend_from_slice(&block[range]);
                }
            }
        } else if let Some(v) = field(line, b"event") {
            let off = start + (line.len() - v.len());
            event = Some(block.slice(off..line_end));
        }
        start = end + 1;
    }
    let data = match (joined, first) {
        (Some(j), _) => Bytes::from(j),
        (None, Some(f)) => block.slice(f),
        (None, None) => return None,
    };
    Some(SseEvent { event, data })
}

/// The value of `name: value` (one optional space after the colon), if the line is that field.
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    let rest = rest.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = p.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn write_then_parse_round_trips_across_any_split() {
        let mut wire = Vec::new();
        write_event(
            &mut wire,
            "response.created",
            br#"{"type":"response.created"}"#,
        );
        write_event(&mut wire, "response.output_text.delta", br#"{"delta":"a"}"#);
        assert!(wire.starts_with(b"event: response.created\ndata: {\"type\""));
        for cut in 0..wire.len() {
            let mut p = SseParser::new(1 << 20);
            p.feed(&wire[..cut]);
            let mut got = all(&mut p);
            p.feed(&wire[cut..]);
            got.extend(all(&mut p));
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].event.as_deref(), Some(&b"response.created"[..]));
            assert_eq!(&got[1].data[..], br#"{"delta":"a"}"#);
            assert_eq!(p.buffered(), 0);
        }
    }

    #[test]
    fn crlf_comments_and_multiline_data() {
        let mut p = SseParser::new(1 << 20);
        p.feed(b": keep-alive\r\n\r\ndata: a\r\ndata:b\r\n\r\nevent: x\ndata: [DONE]\n\n");
        let got = all(&mut p);
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].data[..], b"a\nb");
        assert_eq!(got[0].event, None);
        assert_eq!(&got[1].data[..], b"[DONE]");
    }

    #[test]
    fn multiline_data_is_written_as_several_lines() {
        let mut wire = Vec::new();
        write_event(&mut wire, "t", b"a\nb");
        assert_eq!(wire, b"event: t\ndata: a\ndata: b\n\n");
    }

    #[test]
    fn line_breaks_are_split_as_a_byte_split_would() {
        // The per-byte split this replaced, as the reference.
        let reference = |data: &[u8]| {
            let mut out = b"event: t\n".to_vec();
            for line in data.split(|&b| b == b'\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                out.push(b'\n');
            }
            out.push(b'\n');
            out
        };
        for data in [
            &b""[..],
            b"\n",
            b"\n\n",
            b"a\r\nb\r\n",
            b"\r",
            b"{\"k\":1}",
            b"a\nb\nc",
            b"x\r\r\ny",
        ] {
            let mut wire = Vec::new();
            write_event(&mut wire, "t", data);
            assert_eq!(wire, reference(data), "{data:?}");
        }
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut p = SseParser::new(16);
        p.feed(b"data: 0123456789012345678901234567890");
        assert_eq!(p.next_event(), Err(SseError::TooLarge(16)));
    }

    #[test]
    fn the_limit_does_not_depend_on_how_reads_were_cut() {
        // Found by fuzz/fuzz_targets/sse.rs: an event over the limit got through when it
        // arrived whole in one read, and was refused when it arrived in pieces.
        let mut p = SseParser::new(16);
        p.feed(b"data: 0123456789ab\n\n");
        assert_eq!(p.next_event(), Err(SseError::TooLarge(16)));
        // An event of exactly the limit is fine, even while its blank line is still partial.
        let mut p = SseParser::new(16);
        p.feed(b"data: 0123456789\r\n\r");
        assert_eq!(p.next_event(), Ok(None));
        p.feed(b"\n");
        assert_eq!(&p.next_event().unwrap().unwrap().data[..], b"0123456789");
    }
}
