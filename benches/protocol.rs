//! Hot-path benches for the wire vocabulary, SSE framing and the pre-send normalizer.
//!
//! Each bench is timed by criterion, then run again under the counting allocator and reported as
//! one line: `ALLOC <name>: <allocs>/op <bytes> B/op`. See `benches/README.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::protocol::json_depth::{check_depth, MAX_JSON_DEPTH};
use shardgate::protocol::sse::{write_event, SseParser};
use shardgate::protocol::{ClientFrame, EventKind, UpstreamEvent};
use shardgate::shard::normalizer::{map_back, rewrite, PreviousId, Rewrite};
use shardgate::shard::relay::{judge, Verdict};

#[path = "alloc_counter.rs"]
mod alloc_counter;

#[global_allocator]
static ALLOC: alloc_counter::Counting = alloc_counter::Counting;

use alloc_counter::report_allocs;

/// One Codex-style function tool definition.
fn tool(i: usize) -> String {
    format!(
        r#"{{"type":"function","name":"tool_{i}","description":"Runs a shell command and returns its output. Use for builds, tests, file listings and searches in the workspace; prefer rg over grep. Always set workdir; never cd.","strict":false,"parameters":{{"type":"object","properties":{{"command":{{"type":"array","items":{{"type":"string"}},"description":"The command to execute"}},"workdir":{{"type":"string","description":"The working directory to execute the command in"}},"timeout_ms":{{"type":"number","description":"The timeout for the command in milliseconds"}},"with_escalated_permissions":{{"type":"boolean","description":"Whether to request escalated permissions"}},"justification":{{"type":"string","description":"Only set if with_escalated_permissions is true"}}}},"required":["command"],"additionalProperties":false}}}}"#
    )
}

/// A Codex-shaped `response.create` of at least `target` bytes: long instructions, a tools array
/// repeated until the size is reached, input items including a `function_call` and its
/// `function_call_output`, `store: false` and a `previous_response_id` near the end.
fn codex_frame(target: usize) -> Bytes {
    let instructions = "You are Codex, a coding agent running in a terminal. ".repeat(40);
    let input = concat!(
        r#"[{"type":"message","role":"developer","content":[{"type":"input_text","text":"<environment_context><cwd>/home/dev/project</cwd><approval_policy>on-request</approval_policy><sandbox_mode>workspace-write</sandbox_mode><network_access>restricted</network_access><shell>bash</shell></environment_context>"}]},"#,
        r#"{"type":"message","role":"user","content":[{"type":"input_text","text":"Run the test suite and fix the failing test in src/shard/pool.rs."}]},"#,
        r#"{"type":"reasoning","summary":[{"type":"summary_text","text":"**Running tests**"}],"encrypted_content":"gAAAAABo_4kPqR2xYbT0m3vZcW9nE1fH8sLdK7uJ6aQ5iO4pG2yX0tB3eN9rM1wV8zC7kF6jD5hS4gA2lU0oI9yT8rE7wQ6"},"#,
        r#"{"type":"function_call","name":"shell","arguments":"{\"command\":[\"bash\",\"-lc\",\"cargo test --quiet\"],\"workdir\":\"/home/dev/project\"}","call_id":"call_Xr4kq9ZpV2mN8sT1"},"#,
        r#"{"type":"function_call_output","call_id":"call_Xr4kq9ZpV2mN8sT1","output":"{\"output\":\"running 42 tests\\ntest shard::pool::tests::evicts_idle ... FAILED\\n\\nfailures:\\n    left: 2\\n   right: 1\\n\",\"metadata\":{\"exit_code\":101,\"duration_seconds\":3.2}}"}]"#
    );
    let head = format!(
        r#"{{"type":"response.create","model":"gpt-5-codex","instructions":"{instructions}","input":{input},"tools":["#
    );
    let tail = r#"],"tool_choice":"auto","parallel_tool_calls":false,"reasoning":{"effort":"medium","summary":"auto"},"store":false,"stream":true,"include":["reasoning.encrypted_content"],"prompt_cache_key":"0199f3c2-7d1e-7a40-b8f5-3c9a2e6d1f07","previous_response_id":"resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e"}"#;
    let mut s = head;
    let mut i = 0;
    while s.len() + tail.len() < target {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&tool(i));
        i += 1;
    }
    s.push_str(tail);
    Bytes::from(s)
}

/// A frame as `perf/steady.sh` sends it (`src/load/frame.rs`): one user message whose text is
/// padded with ASCII filler until the frame is `target` bytes, `store: false`, chained by id.
fn steady_frame(target: usize) -> Bytes {
    let head = r#"{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"Summarise the log below. "#;
    let tail = r#""}]}],"previous_response_id":"resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e"}"#;
    let filler = b"the quick brown fox jumps over the lazy dog ";
    let mut s = String::from(head);
    s.extend(
        filler
            .iter()
            .cycle()
            .take(target.saturating_sub(head.len() + tail.len()))
            .map(|b| char::from(*b)),
    );
    s.push_str(tail);
    Bytes::from(s)
}

const SMALL_FRAME: &[u8] = br#"{"type":"response.create","model":"gpt-5-codex","store":false,"previous_response_id":"resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"continue"}]}]}"#;

const DELTA_EVENT: &[u8] = br#"{"type":"response.output_text.delta","sequence_number":57,"item_id":"msg_68f0c2a9e1d4819cb1f27a3e5d6c8b90","output_index":1,"content_index":0,"delta":" the","logprobs":[],"obfuscation":"Qm3xT9kLp2"}"#;

/// A delta as the mock upstream sends it: keys in no particular order, `type` among the last.
const LATE_TYPE_DELTA_EVENT: &[u8] = br#"{"content_index":0,"output_index":0,"delta":"ctetur a","logprobs":[],"item_id":"msg_ZLBe2CxEqj0tDCPm","type":"response.output_text.delta","sequence_number":8,"mock_ts_us":1795446651491897}"#;

const COMPLETED_EVENT: &[u8] = br#"{"type":"response.completed","sequence_number":212,"response":{"id":"resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e","object":"response","created_at":1760608929,"status":"completed","background":false,"error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"max_tool_calls":null,"model":"gpt-5-codex-2026-01","output":[{"id":"rs_68f0c2a4f1a0819c8e","type":"reasoning","summary":[]},{"id":"msg_68f0c2a9e1d4819cb1f27a3e5d6c8b90","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"The failing test expected one idle connection after eviction; the pool kept two because the deadline check used <= instead of <. Fixed and re-ran: 42 passed."}],"role":"assistant"}],"parallel_tool_calls":false,"previous_response_id":"resp_68f0c29e7c10819ca4","prompt_cache_key":"0199f3c2-7d1e-7a40-b8f5-3c9a2e6d1f07","reasoning":{"effort":"medium","summary":"auto"},"safety_identifier":null,"service_tier":"default","store":false,"temperature":1.0,"text":{"format":{"type":"text"},"verbosity":"medium"},"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":28411,"input_tokens_details":{"cached_tokens":27648},"output_tokens":412,"output_tokens_details":{"reasoning_tokens":256},"total_tokens":28823},"user":null,"metadata":{}}}"#;

/// A `response.created` as upstream sends it: the response object, still without output or usage.
const CREATED_EVENT: &[u8] = br#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e","object":"response","created_at":1760608929,"status":"in_progress","background":false,"error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"max_tool_calls":null,"model":"gpt-5-codex-2026-01","output":[],"parallel_tool_calls":false,"previous_response_id":"resp_68f0c2a0aa11819c8e2d4f6a7b9c0d1e","prompt_cache_key":"0199f3c2-7d1e-7a40-b8f5-3c9a2e6d1f07","reasoning":{"effort":"medium","summary":"auto"},"safety_identifier":null,"service_tier":"auto","store":false,"temperature":1.0,"text":{"format":{"type":"text"},"verbosity":"medium"},"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}"#;

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

fn client_frame(c: &mut Criterion) {
    let big = codex_frame(30 * 1024);
    let parsed = ClientFrame::parse(&big).expect("codex frame parses");
    assert_eq!(parsed.model.as_deref(), Some("gpt-5-codex"));
    assert!(parsed.is_store_disabled());
    assert_eq!(
        parsed.previous_response_id.as_deref(),
        Some("resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e")
    );
    assert_eq!(parsed.tool_output_call_ids.len(), 1);
    let name = format!("client_frame/parse_codex_{}k", big.len() / 1024);
    c.bench_function(&name, |b| {
        b.iter(|| ClientFrame::parse(black_box(&big)).unwrap())
    });
    report_allocs(&name, || ClientFrame::parse(black_box(&big)).unwrap());

    // The reading `parse` leaves invalid, too deep or escaped frames to (every frame's, before
    // the one-pass reading): depth check, sonic-rs's validating iterator, `input` again.
    let name = format!("client_frame/read_reference_codex_{}k", big.len() / 1024);
    c.bench_function(&name, |b| {
        b.iter(|| ClientFrame::read_reference(black_box(&big)).unwrap())
    });
    report_allocs(&name, || {
        ClientFrame::read_reference(black_box(&big)).unwrap()
    });

    // The nesting bound every frame the one-pass reading leaves alone passes first.
    let name = format!("client_frame/check_depth_codex_{}k", big.len() / 1024);
    c.bench_function(&name, |b| {
        b.iter(|| check_depth(black_box(&big), MAX_JSON_DEPTH).unwrap())
    });
    report_allocs(&name, || {
        check_depth(black_box(&big), MAX_JSON_DEPTH).unwrap()
    });

    let steady = steady_frame(30_000);
    let parsed = ClientFrame::parse(&steady).expect("steady frame parses");
    assert_eq!(parsed.model.as_deref(), Some("gpt-5"));
    assert!(parsed.previous_response_id.is_some());
    let name = format!("client_frame/parse_steady_{}k", steady.len() / 1000);
    c.bench_function(&name, |b| {
        b.iter(|| ClientFrame::parse(black_box(&steady)).unwrap())
    });
    report_allocs(&name, || ClientFrame::parse(black_box(&steady)).unwrap());
    let name = format!(
        "client_frame/read_reference_steady_{}k",
        steady.len() / 1000
    );
    c.bench_function(&name, |b| {
        b.iter(|| ClientFrame::read_reference(black_box(&steady)).unwrap())
    });
    report_allocs(&name, || {
        ClientFrame::read_reference(black_box(&steady)).unwrap()
    });

    // A long-sessions client frame (`perf/` long-sessions shape: `--payload-bytes 8000`).
    let long = steady_frame(8_000);
    assert!(ClientFrame::parse(&long).is_ok());
    let name = format!("client_frame/parse_long_sessions_{}k", long.len() / 1000);
    c.bench_function(&name, |b| {
        b.iter(|| ClientFrame::parse(black_box(&long)).unwrap())
    });
    report_allocs(&name, || ClientFrame::parse(black_box(&long)).unwrap());

    let small = ClientFrame::parse(SMALL_FRAME).expect("small frame parses");
    assert!(small.tool_output_call_ids.is_empty());
    let name = format!("client_frame/parse_small_{}b", SMALL_FRAME.len());
    c.bench_function(&name, |b| {
        b.iter(|| ClientFrame::parse(black_box(SMALL_FRAME)).unwrap())
    });
    report_allocs(&name, || {
        ClientFrame::parse(black_box(SMALL_FRAME)).unwrap()
    });
}

fn upstream_event(c: &mut Criterion) {
    let ev = UpstreamEvent::classify(DELTA_EVENT).unwrap();
    assert_eq!(ev.kind, EventKind::Token);
    let name = "upstream/classify_output_text_delta";
    c.bench_function(name, |b| {
        b.iter(|| {
            UpstreamEvent::classify(black_box(DELTA_EVENT))
                .unwrap()
                .kind
        })
    });
    report_allocs(name, || {
        UpstreamEvent::classify(black_box(DELTA_EVENT))
            .unwrap()
            .kind
    });

    // An event whose `type` is not its first key (the mock upstream shuffles keys): found by
    // the allocation-free walk over the top-level fields, not through sonic-rs's object
    // iterator, which allocates its key buffer when created and an owned copy of every key it
    // yields (sonic-rs 0.5 turns even borrowed keys into owned strings): what classifying such
    // an event used to cost (the second line).
    let ev = UpstreamEvent::classify(LATE_TYPE_DELTA_EVENT).unwrap();
    assert_eq!(ev.kind, EventKind::Token);
    let name = "upstream/classify_delta_type_not_first";
    c.bench_function(name, |b| {
        b.iter(|| {
            UpstreamEvent::classify(black_box(LATE_TYPE_DELTA_EVENT))
                .unwrap()
                .kind
        })
    });
    report_allocs(name, || {
        UpstreamEvent::classify(black_box(LATE_TYPE_DELTA_EVENT))
            .unwrap()
            .kind
    });
    let name = "sonic_rs/to_object_iter_find_type_not_first";
    let iterate = || {
        sonic_rs::to_object_iter(black_box(LATE_TYPE_DELTA_EVENT))
            .filter_map(Result::ok)
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v.as_raw_str().len())
    };
    c.bench_function(name, |b| b.iter(iterate));
    report_allocs(name, iterate);

    let name = "upstream/classify_completed";
    c.bench_function(name, |b| {
        b.iter(|| {
            UpstreamEvent::classify(black_box(COMPLETED_EVENT))
                .unwrap()
                .kind
        })
    });
    report_allocs(name, || {
        UpstreamEvent::classify(black_box(COMPLETED_EVENT))
            .unwrap()
            .kind
    });

    let done = UpstreamEvent::classify(COMPLETED_EVENT).unwrap();
    let usage = done.usage().expect("completed event has usage");
    assert_eq!(usage.input_tokens, 28411);
    assert_eq!(usage.cached_tokens, 27648);
    assert_eq!(usage.reasoning_tokens, 256);
    assert_eq!(
        done.response_id().as_deref(),
        Some("resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e")
    );

    let name = "upstream/completed_usage";
    c.bench_function(name, |b| b.iter(|| black_box(&done).usage()));
    report_allocs(name, || black_box(&done).usage());

    let name = "upstream/completed_response_id";
    c.bench_function(name, |b| b.iter(|| black_box(&done).response_id()));
    report_allocs(name, || black_box(&done).response_id());

    // What the relay does once per terminal event: classify, then read usage and id.
    let name = "upstream/completed_classify_usage_id";
    let all = || {
        let ev = UpstreamEvent::classify(black_box(COMPLETED_EVENT)).unwrap();
        (ev.usage(), ev.response_id().map(|c| c.len()))
    };
    c.bench_function(name, |b| b.iter(all));
    report_allocs(name, all);
}

fn normalizer(c: &mut Criterion) {
    // Text, as the turn gets it from the client's reader.
    let frame = shardgate::tungstenite::Utf8Bytes::try_from(codex_frame(30 * 1024)).unwrap();
    let parsed = ClientFrame::parse(frame.as_bytes()).unwrap();

    let empty = HashMap::new();
    let (out, rw) = rewrite(&frame, &parsed, PreviousId::AsSent, &empty).unwrap();
    assert_eq!(rw, Rewrite::None);
    assert_eq!(
        out.as_ptr(),
        frame.as_ptr(),
        "unmapped frame must not be copied"
    );
    let name = "normalizer/normalize_no_map";
    c.bench_function(name, |b| {
        b.iter(|| rewrite(black_box(&frame), &parsed, PreviousId::AsSent, &empty))
    });
    report_allocs(name, || {
        rewrite(black_box(&frame), &parsed, PreviousId::AsSent, &empty)
    });

    let map = HashMap::from([("gpt-5-codex".to_string(), "gpt-5-codex-2026-01".to_string())]);
    let (out, rw) = rewrite(&frame, &parsed, PreviousId::AsSent, &map).unwrap();
    assert!(matches!(rw, Rewrite::ModelMapped { .. }));
    assert!(out.len() > frame.len());
    let name = "normalizer/normalize_mapped_30k";
    c.bench_function(name, |b| {
        b.iter(|| rewrite(black_box(&frame), &parsed, PreviousId::AsSent, &map))
    });
    report_allocs(name, || {
        rewrite(black_box(&frame), &parsed, PreviousId::AsSent, &map)
    });

    let back = map_back(COMPLETED_EVENT, &rw).expect("completed event carries the model");
    assert!(back.windows(22).any(|w| w == br#""model":"gpt-5-codex","#));
    let name = "normalizer/map_back_completed";
    c.bench_function(name, |b| {
        b.iter(|| map_back(black_box(COMPLETED_EVENT), &rw))
    });
    report_allocs(name, || map_back(black_box(COMPLETED_EVENT), &rw));

    // The per-event cost for every non-lifecycle event of a mapped session.
    assert!(map_back(DELTA_EVENT, &rw).is_none());
    let name = "normalizer/map_back_delta";
    c.bench_function(name, |b| b.iter(|| map_back(black_box(DELTA_EVENT), &rw)));
    report_allocs(name, || map_back(black_box(DELTA_EVENT), &rw));
}

/// One Responses stream as SSE: `response.created`, `deltas` text deltas, `response.completed`.
fn sse_stream(deltas: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    write_event(
        &mut wire,
        "response.created",
        br#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e","status":"in_progress"}}"#,
    );
    for _ in 0..deltas {
        write_event(&mut wire, "response.output_text.delta", DELTA_EVENT);
    }
    write_event(&mut wire, "response.completed", COMPLETED_EVENT);
    wire
}

/// A Codex-shaped `POST /v1/responses` head (the headers Codex sends), as the front door reads it.
const CODEX_POST_HEAD: &[u8] = b"POST /v1/responses HTTP/1.1\r\n\
host: gateway.internal:8443\r\n\
authorization: Bearer sk-gw-0123456789abcdef0123456789abcdef\r\n\
content-type: application/json\r\n\
accept: text/event-stream\r\n\
content-length: 30000\r\n\
openai-beta: responses=experimental\r\n\
session-id: 0199f3c2-7d1e-7a40-b8f5-3c9a2e6d1f07\r\n\
conversation_id: 0199f3c2-7d1e-7a40-b8f5-3c9a2e6d1f07\r\n\
originator: codex_cli_rs\r\n\
user-agent: codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm-256color\r\n\
x-codex-turn-metadata: {\"turn\":7}\r\n\
x-client-request-id: 5f0c2a1b-3e48-49c9-d7a5-e2f1b0c3d4e5\r\n\
accept-encoding: identity\r\n\
connection: keep-alive\r\n\r\n";

/// A `POST /v1/responses` head as the load tool's SSE client sends it (`perf/` http-sse shape).
const LOAD_POST_HEAD: &[u8] = b"POST /v1/responses HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
Authorization: Bearer sk-gw-0123456789abcdef0123456789abcdef\r\n\
Content-Type: application/json\r\n\
Accept: text/event-stream\r\n\
Content-Length: 8000\r\n\r\n";

fn http_head(c: &mut Criterion) {
    use shardgate::protocol::http1::parse_request;

    let (head, used) = parse_request(CODEX_POST_HEAD)
        .expect("a valid head")
        .expect("a whole head");
    assert_eq!((used, head.headers.len()), (CODEX_POST_HEAD.len(), 14));
    let name = "http/parse_request_codex_post";
    let parse = || parse_request(black_box(CODEX_POST_HEAD)).is_ok();
    c.bench_function(name, |b| b.iter(parse));
    report_allocs(name, parse);

    let (head, used) = parse_request(LOAD_POST_HEAD)
        .expect("a valid head")
        .expect("a whole head");
    assert_eq!((used, head.headers.len()), (LOAD_POST_HEAD.len(), 5));
    let name = "http/parse_request_sse_post";
    let parse = || parse_request(black_box(LOAD_POST_HEAD)).is_ok();
    c.bench_function(name, |b| b.iter(parse));
    report_allocs(name, parse);
}

fn sse(c: &mut Criterion) {
    // Framing one delta for an SSE client, into a buffer reused across events (as a writer
    // that flushes and clears its buffer would).
    let mut out = Vec::with_capacity(4096);
    write_event(&mut out, "response.output_text.delta", DELTA_EVENT);
    assert!(out.starts_with(b"event: response.output_text.delta\ndata: {"));
    assert!(out.ends_with(b"}\n\n"));
    // A ~2 KB `response.completed`: the framing looks for line breaks in the whole event.
    let name = "sse/write_event_completed";
    c.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            write_event(&mut out, "response.completed", black_box(COMPLETED_EVENT));
            out.len()
        })
    });
    report_allocs(name, || {
        out.clear();
        write_event(&mut out, "response.completed", black_box(COMPLETED_EVENT));
        out.len()
    });
    let name = "sse/write_event_delta";
    c.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            write_event(
                &mut out,
                "response.output_text.delta",
                black_box(DELTA_EVENT),
            );
            out.len()
        })
    });
    report_allocs(name, || {
        out.clear();
        write_event(
            &mut out,
            "response.output_text.delta",
            black_box(DELTA_EVENT),
        );
        out.len()
    });

    // Parsing: one delta event fed and taken per operation, the parser kept across operations
    // (its buffer is reused once the previous event's bytes are released).
    let mut one = Vec::new();
    write_event(&mut one, "response.output_text.delta", DELTA_EVENT);
    let mut parser = SseParser::new(1 << 20);
    parser.feed(&one);
    let ev = parser.next_event().unwrap().expect("one event");
    assert_eq!(
        &ev.data[..],
        DELTA_EVENT,
        "single-line data comes back as-is"
    );
    assert_eq!(parser.buffered(), 0);
    let name = "sse/parse_one_delta";
    let mut step = || {
        parser.feed(black_box(&one));
        parser.next_event().unwrap().map(|e| e.data.len())
    };
    c.bench_function(name, |b| b.iter(&mut step));
    report_allocs(name, &mut step);

    // A whole 100-event stream fed in 16 KiB reads, as the upstream reader sees it.
    let wire = sse_stream(98);
    let mut count = 0;
    let mut parser = SseParser::new(1 << 20);
    for chunk in wire.chunks(16 * 1024) {
        parser.feed(chunk);
        while parser.next_event().unwrap().is_some() {
            count += 1;
        }
    }
    assert_eq!(count, 100);
    let name = format!("sse/parse_stream_100_events_{}k", wire.len() / 1024);
    let whole = || {
        let mut parser = SseParser::new(1 << 20);
        let mut n = 0;
        for chunk in black_box(&wire).chunks(16 * 1024) {
            parser.feed(chunk);
            while let Ok(Some(_)) = parser.next_event() {
                n += 1;
            }
        }
        n
    };
    c.bench_function(&name, |b| b.iter(whole));
    report_allocs(&name, whole);
}

/// What the relay does to each upstream event ([`judge`]: classify, then, for lifecycle events,
/// the id, usage, pending tool calls and the model mapped back): a delta (most events of a
/// turn), a `response.created` and a `response.completed` with usage, in an unmapped session
/// whose output is not captured.
fn judge_event(c: &mut Criterion) {
    let created = UpstreamEvent::classify(CREATED_EVENT).unwrap();
    assert_eq!(created.kind, EventKind::Created);
    let name = "upstream/classify_created";
    c.bench_function(name, |b| {
        b.iter(|| {
            UpstreamEvent::classify(black_box(CREATED_EVENT))
                .unwrap()
                .kind
        })
    });
    report_allocs(name, || {
        UpstreamEvent::classify(black_box(CREATED_EVENT))
            .unwrap()
            .kind
    });
    assert_eq!(
        created.response_id().as_deref(),
        Some("resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e")
    );
    let name = "upstream/created_response_id";
    c.bench_function(name, |b| b.iter(|| black_box(&created).response_id()));
    report_allocs(name, || black_box(&created).response_id());

    for (name, event, ends) in [
        ("relay/judge_delta", DELTA_EVENT, false),
        ("relay/judge_created", CREATED_EVENT, false),
        ("relay/judge_completed", COMPLETED_EVENT, true),
    ] {
        let run = || {
            let mut ends = None;
            match judge(
                black_box(event),
                &Rewrite::None,
                true,
                false,
                &[],
                &mut ends,
            ) {
                Verdict::Relay {
                    replaced: None,
                    range,
                } => (range.len(), ends.is_some()),
                _ => panic!("relayed as it came"),
            }
        };
        assert_eq!(run().1, ends, "{name}");
        assert!(run().0 > 0, "{name}: the type is found");
        c.bench_function(name, |b| b.iter(run));
        report_allocs(name, run);
    }
}

/// The per-frame WebSocket work: a long-sessions client frame (8 KB) unmasked into a buffer that
/// exists already (as the raw client read does), and a delta event's frame cut for the relay.
fn ws_frame(c: &mut Criterion) {
    use shardgate::net::ws_frame::{cut, mask_into, Cut};

    let payload = steady_frame(8_000);
    let mut out = vec![0u8; payload.len()];
    let name = "ws_frame/mask_into_8k";
    c.bench_function(name, |b| {
        b.iter(|| {
            mask_into(
                black_box(&payload),
                black_box([0x37, 0xfa, 0x21, 0x3d]),
                &mut out,
            )
        })
    });

    let len = u16::try_from(DELTA_EVENT.len()).expect("a short event");
    let mut frame = vec![0x81, 126];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(DELTA_EVENT);
    assert!(matches!(cut(&frame, 1 << 20), Cut::Frame { .. }));
    let name = "ws_frame/cut_delta";
    c.bench_function(name, |b| b.iter(|| cut(black_box(&frame), 1 << 20)));
}

criterion_group! {
    name = benches;
    config = config();
    targets = client_frame, upstream_event, judge_event, normalizer, sse, http_head, ws_frame
}
criterion_main!(benches);
