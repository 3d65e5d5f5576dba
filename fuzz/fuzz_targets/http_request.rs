//! A client's HTTP/1.1 request: the front door's head parser (`protocol::http1::parse_request`), which
//! also decides the body framing, and the body decoded within a limit. The first input byte
//! picks the read size.
//!
//! Invariants: an accepted head is framed unambiguously (RFC 9112 §6.3: never both
//! `Content-Length` and `Transfer-Encoding`, at most one length, chunked only over HTTP/1.1, no
//! bare LF line ends); the body comes out the same whether it arrives in one read or in many.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::protocol::http1::{parse_request, Framing};
use shardgate_fuzz::{decode_in_steps, param};

/// A small limit, so that the fuzzer reaches the over-limit paths.
const LIMIT: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((step, wire)) = param(data) else {
        return;
    };
    let Ok(Some((head, used))) = parse_request(wire) else {
        return;
    };
    assert!(used <= wire.len());
    assert!(!head.path.contains('?'), "the query stays out of the path");
    assert!(head
        .headers
        .iter()
        .all(|(name, _)| !name.bytes().any(|b| b.is_ascii_uppercase())));
    let _ = head.keep_alive();

    let count = |name: &str| head.headers.iter().filter(|(n, _)| *n == name).count();
    let (lengths, codings) = (count("content-length"), count("transfer-encoding"));
    assert!(lengths <= 1, "more than one Content-Length accepted");
    assert!(
        lengths == 0 || codings == 0,
        "Content-Length with Transfer-Encoding accepted"
    );
    match head.body {
        Framing::Chunked => assert!(codings > 0 && !head.http10),
        Framing::Length(n) => {
            assert_eq!(codings, 0);
            let declared = head.header("content-length").map(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
            });
            assert_eq!(
                declared.unwrap_or(Some(0)),
                Some(n),
                "the length read is the one sent"
            );
        }
        Framing::UntilClose => panic!("a request body is never read to close"),
    }
    let mut line_ends = wire[..used]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n');
    assert!(
        line_ends.all(|(i, _)| i > 0 && wire[i - 1] == b'\r'),
        "a bare LF accepted"
    );

    let body = &wire[used..];
    let once = decode_in_steps(head.body, LIMIT, body, body.len());
    let stepped = decode_in_steps(head.body, LIMIT, body, usize::from(step) + 1);
    assert_eq!(once, stepped, "the body depends on how reads were cut");
});
