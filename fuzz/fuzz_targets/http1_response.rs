//! An upstream's HTTP/1.1 response: `http1::parse_head`, then the body decoded by `BodyDecoder`
//! with the framing the head declared. The first input byte picks the read size; the body must
//! come out the same whether it arrives in one read or in many.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::protocol::http1::parse_head;
use shardgate_fuzz::{decode_in_steps, param};

/// A small limit, so that the fuzzer reaches the over-limit paths.
const LIMIT: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((step, wire)) = param(data) else {
        return;
    };
    let Ok(Some((head, used))) = parse_head(wire) else {
        return;
    };
    assert!(used <= wire.len());
    let body = &wire[used..];
    let once = decode_in_steps(head.framing, LIMIT, body, body.len());
    let stepped = decode_in_steps(head.framing, LIMIT, body, usize::from(step) + 1);
    assert_eq!(once, stepped, "the body depends on how reads were cut");
});
