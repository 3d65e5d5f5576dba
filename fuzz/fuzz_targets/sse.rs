//! Server-sent events read from an upstream (`protocol::sse::SseParser`), and written back to a
//! client (`sse::write_event`). The first input byte picks the read size.
//!
//! Invariants: the events (and the error, if any) do not depend on how the stream was cut into
//! reads; no event is larger than the parser's limit; an event written with `write_event` reads
//! back as the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::protocol::sse::{write_event, SseError, SseEvent, SseParser};
use shardgate_fuzz::{param, pieces};

/// A small limit, so that the fuzzer reaches the over-limit path.
const LIMIT: usize = 512;

/// Parses `wire` delivered in reads of `step` bytes: every event, then the error if one
/// stopped the stream.
fn parse(wire: &[u8], step: usize) -> (Vec<SseEvent>, Option<SseError>) {
    let mut parser = SseParser::new(LIMIT);
    let mut events = Vec::new();
    for piece in pieces(wire, step) {
        parser.feed(piece);
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => {
                    assert!(ev.data.len() <= LIMIT, "an event over the limit");
                    events.push(ev);
                }
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((step, wire)) = param(data) else {
        return;
    };
    let once = parse(wire, wire.len());
    let stepped = parse(wire, usize::from(step) + 1);
    assert_eq!(once, stepped, "events depend on how reads were cut");

    // What the gateway writes to its SSE clients reads back as what it wrote (data has no
    // bare CR: a line break inside an event's JSON is `\n`).
    if wire.contains(&b'\r') {
        return;
    }
    let mut out = Vec::new();
    write_event(&mut out, "response.output_text.delta", wire);
    let mut parser = SseParser::new(usize::MAX);
    parser.feed(&out);
    let ev = parser.next_event().expect("no limit").expect("one event");
    assert_eq!(&ev.data[..], wire);
    assert_eq!(parser.buffered(), 0);
});
