//! Per-turn shard costs: pool acquire/release on the idle stack, histogram recording and the
//! interval snapshot, the sticky cache's write and lookup (a usage record's cost is in
//! `benches/control.rs`); and the per-event relay of an upstream event to a client WebSocket, through the
//! WebSocket codec (as before the cut-through) and cut through; a client's 30 KB frame read
//! through the codec with a recording copy (as before the raw read) and read raw; what an
//! attempt's reader costs beyond its events (its read buffer, fresh or pooled); a poll of a client
//! that sends nothing, through the codec and by `client_read::readable`.
//!
//! Each bench is timed by criterion, then run again under the counting allocator and reported as
//! one line: `ALLOC <name>: <allocs>/op <bytes> B/op`. See `benches/README.md`.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::config::Config;
use shardgate::metrics::{Hist, ShardMetrics, Sparse};
use shardgate::net::ws_frame::{cut, masked_text, Cut};
use shardgate::protocol::UpstreamEvent;
use shardgate::shard::account::AccountRuntime;
use shardgate::shard::pool::Pool;
use shardgate::state::embedded::EmbeddedStore;
use shardgate::state::TurnState;

#[path = "alloc_counter.rs"]
mod alloc_counter;
#[path = "support/sticky.rs"]
mod sticky;

#[global_allocator]
static ALLOC: alloc_counter::Counting = alloc_counter::Counting;

use alloc_counter::report_allocs;

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
}

/// The pool's idle-stack path, through its public API: one real upstream connection (dialed to
/// an in-process mock on a glommio executor), then `acquire` (pops it) and `Lease::release`
/// (pushes it back) per operation. The acquire future completes on its first poll on this path,
/// so it is driven with `block_on` inside the executor.
fn pool(c: &mut Criterion) {
    let mock = shardgate::mock::start(shardgate::mock::MockConfig::default()).expect("mock starts");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshards = 1\n[[client_keys]]\nkey = \"sk-bench\"\nid = \"bench\"\n\
         [[accounts]]\nid = \"acct\"\nbase_url = \"{}\"\napi_key = \"sk-upstream\"\nmax_conns = 4\n\
         [usage]\npath = \"/dev/null\"\n",
        mock.base_url()
    );
    let config = Config::parse(&text, &|_| None).expect("bench config is valid");
    let executor = bench_executor();
    executor.run(async {
        let account =
            Rc::new(AccountRuntime::new(0, config.accounts[0].clone()).expect("account is valid"));
        let pool = Rc::new(Pool::new(
            account,
            4,
            Rc::new(config.upstream.clone()),
            Rc::new(Cell::new(0)),
            config.server.rest_after,
        ));
        let lease = pool
            .acquire(&[])
            .await
            .expect("first acquire dials the mock");
        assert!(!lease.reused);
        lease.release();
        let cycle = || {
            let lease = futures_lite::future::block_on(pool.acquire(&[]))
                .expect("an idle connection is there");
            let reused = lease.reused;
            lease.release();
            reused
        };
        assert!(cycle(), "the second acquire reuses the idle connection");
        assert_eq!(pool.open(), 1);
        let name = "pool/acquire_release_idle";
        c.bench_function(name, |b| b.iter(cycle));
        report_allocs(name, cycle);
        assert_eq!(pool.counters.dialed.get(), 1, "no dial after the first");
    });
    mock.stop();
}

fn histograms(c: &mut Criterion) {
    let metrics = ShardMetrics::default();
    let mut us = 1u64;
    let mut next = move || {
        // A spread of values so recording touches different buckets.
        us = (us * 7 + 13) % 50_000 + 1;
        Duration::from_micros(us)
    };
    let name = "metrics/record";
    c.bench_function(name, |b| {
        b.iter(|| metrics.record(black_box(Hist::EventAddedWs), next()))
    });
    report_allocs(name, || {
        metrics.record(black_box(Hist::EventAddedWs), next())
    });
    let name = "metrics/record_n_8";
    c.bench_function(name, |b| {
        b.iter(|| metrics.record_n(black_box(Hist::EventAddedWs), next(), 8))
    });
    report_allocs(name, || {
        metrics.record_n(black_box(Hist::EventAddedWs), next(), 8)
    });
    let taken = metrics.take_interval();
    assert_eq!(taken.len(), Hist::ALL.len());
    assert!(!taken.iter().all(Sparse::is_empty));

    // What a shard ships each stats interval: only the buckets recorded since the last one
    // (an idle shard: nine empty lists; before, a clone of nine ~190 KB histograms).
    let name = "metrics/take_interval_idle";
    c.bench_function(name, |b| b.iter(|| metrics.take_interval()));
    report_allocs(name, || metrics.take_interval());
    let name = "metrics/take_interval_100_turns";
    let interval = |metrics: &ShardMetrics, next: &mut dyn FnMut() -> Duration| {
        for _ in 0..100 {
            metrics.record(Hist::ClientTtft, next());
            metrics.record(Hist::TurnDuration, next());
            metrics.record_n(Hist::EventAddedWs, next(), 16);
        }
        metrics.take_interval()
    };
    c.bench_function(name, |b| b.iter(|| interval(&metrics, &mut next)));
    report_allocs(name, || interval(&metrics, &mut next));
}

/// What a turn that produced a response leaves in the shard's sticky cache (binding, session's
/// last response), and the lookup the next turn on another connection makes. Ids cycle over a
/// fixed set, as a steady state of sessions does: the cache is warm and holds each key once.
fn sticky_cache(c: &mut Criterion) {
    let mut cache = EmbeddedStore::new(Duration::from_secs(3600), 65_536);
    let ids: Vec<String> = (0..1024)
        .map(|i| format!("resp_68f0c2a1b3e4819c9d7a5e2f1b{i:06}"))
        .collect();
    let sessions = sticky::sessions();
    let binding = sticky::binding();
    let mut i = 0usize;
    let mut turn = move |cache: &mut EmbeddedStore| {
        i = (i + 1) % ids.len();
        let state = TurnState {
            group: "default".into(),
            response_id: ids[i].as_str().into(),
            binding: binding.clone(),
            session: Some(sessions[i]),
            pending: None,
        };
        cache.put_turn_at(&state, Instant::now());
        state
    };
    for _ in 0..1024 {
        turn(&mut cache);
    }
    let name = "state/cache_put_turn";
    c.bench_function(name, |b| b.iter(|| turn(&mut cache)));
    report_allocs(name, || turn(&mut cache));
    let name = "state/cache_lookup_binding";
    let id = "resp_68f0c2a1b3e4819c9d7a5e2f1b000512";
    assert!(cache.binding_at("default", id, Instant::now()).is_some());
    c.bench_function(name, |b| {
        b.iter(|| cache.binding_at("default", black_box(id), Instant::now()))
    });
    report_allocs(name, || {
        cache.binding_at("default", black_box(id), Instant::now())
    });
}

/// A delta as upstream sends it (~180 bytes).
const DELTA_EVENT: &str = r#"{"type":"response.output_text.delta","sequence_number":57,"item_id":"msg_68f0c2a9e1d4819cb1f27a3e5d6c8b90","output_index":1,"content_index":0,"delta":" the","logprobs":[],"obfuscation":"Qm3xT9kLp2"}"#;

/// Events per upstream read in the relay benches (one read of a busy stream brings several).
const EVENTS_PER_READ: usize = 8;

/// An unmasked text frame, as upstream sends it.
fn server_frame(payload: &str) -> Vec<u8> {
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(payload.as_bytes());
    out
}

/// A socket that replays `wire` forever and keeps what is written (cleared by the bench).
struct Loop {
    wire: Vec<u8>,
    at: usize,
    out: Vec<u8>,
}

impl std::io::Read for Loop {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.wire.len() - self.at);
        buf[..n].copy_from_slice(&self.wire[self.at..self.at + n]);
        self.at = (self.at + n) % self.wire.len();
        Ok(n)
    }
}

impl std::io::Write for Loop {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The relay of upstream events to a client WebSocket, per batch of [`EVENTS_PER_READ`]
/// deltas read together: `relay/codec_8_deltas` is the path before the cut-through (tungstenite
/// reads each message as a client, the event is classified, tungstenite writes it again as a
/// server, one flush); `relay/cut_through_8_deltas` is the cut-through (each frame's header read
/// and its payload checked on the read buffer, the event classified on the borrowed payload,
/// the frames written as they came in one write). Both end with the bytes in the same kind of
/// socket buffer, so the difference is the relay's own work.
fn relay(c: &mut Criterion) {
    use shardgate::tungstenite::protocol::{Role, WebSocket};
    use shardgate::tungstenite::Message;
    use std::io::Write;

    let wire: Vec<u8> = (0..EVENTS_PER_READ)
        .flat_map(|_| server_frame(DELTA_EVENT))
        .collect();

    let sock = || Loop {
        wire: wire.clone(),
        at: 0,
        out: Vec::with_capacity(64 * 1024),
    };
    let up = std::cell::RefCell::new(WebSocket::from_raw_socket(sock(), Role::Client, None));
    let down = std::cell::RefCell::new(WebSocket::from_raw_socket(sock(), Role::Server, None));
    let codec = || {
        let (mut up, mut down) = (up.borrow_mut(), down.borrow_mut());
        for _ in 0..EVENTS_PER_READ {
            let Ok(Message::Text(text)) = up.read() else {
                panic!("a text event")
            };
            let ev = UpstreamEvent::classify(text.as_bytes()).expect("an event");
            black_box(ev.kind);
            down.write(Message::Text(text)).expect("queued");
        }
        down.flush().expect("written");
        let written = down.get_ref().out.len();
        down.get_mut().out.clear();
        written
    };
    assert_eq!(codec(), wire.len(), "the client gets the same bytes");
    let name = "relay/codec_8_deltas";
    c.bench_function(name, |b| b.iter(codec));
    report_allocs(name, codec);

    let mut read_buf = vec![0u8; 16 * 1024];
    let mut client = sock();
    let mut upstream = sock();
    let mut cut_through = || {
        let n = std::io::Read::read(&mut upstream, &mut read_buf[..wire.len()]).expect("read");
        let bytes = &read_buf[..n];
        let mut at = 0;
        while let Cut::Frame { header_len, total } = cut(&bytes[at..], 1 << 24) {
            let ev =
                UpstreamEvent::classify(&bytes[at + header_len..at + total]).expect("an event");
            black_box(ev.kind);
            at += total;
        }
        client.write_all(&bytes[..at]).expect("written");
        let written = client.out.len();
        client.out.clear();
        written
    };
    assert_eq!(cut_through(), wire.len(), "the client gets the same bytes");
    let name = "relay/cut_through_8_deltas";
    c.bench_function(name, |b| b.iter(&mut cut_through));
    report_allocs(name, cut_through);

    relay_attempt(c, &wire);
}

/// What an attempt's reader costs beyond its events: `relay/read_buffer_fresh_16k` is the upstream
/// read buffer as `CutThrough` made it before the pool (`Vec::new()`, then a 16 KiB zero-filled
/// resize at the first read); `relay/read_buffer_pooled_16k` takes it from the shard's pool and
/// gives it back ([`PooledBuf`]). `relay/cut_through_attempt_8_deltas` is a whole attempt's
/// reader over an upstream WebSocket in memory: `CutThrough::new`, its 8 frames read and
/// classified on the borrowed payload, the reader dropped.
///
/// [`PooledBuf`]: shardgate::net::buf_pool::PooledBuf
fn relay_attempt(c: &mut Criterion, wire: &[u8]) {
    use async_tungstenite::tungstenite::protocol::Role;
    use async_tungstenite::WebSocketStream;
    use futures_lite::future::block_on;
    use shardgate::net::buf_pool::PooledBuf;
    use shardgate::net::FrameEdge;
    use shardgate::shard::cut_through::{CutThrough, Read};

    let fresh = || {
        // As CutThrough grew it: an empty Vec resized (allocated, then zero-filled).
        let mut buf: Vec<u8> = black_box(Vec::new());
        buf.resize(16 * 1024, 0u8);
        black_box(&mut buf);
        buf.len()
    };
    let name = "relay/read_buffer_fresh_16k";
    c.bench_function(name, |b| b.iter(fresh));
    report_allocs(name, fresh);
    let pooled = || {
        let mut buf = PooledBuf::default();
        buf.ensure(16 * 1024);
        black_box(&mut buf);
        buf.len()
    };
    let name = "relay/read_buffer_pooled_16k";
    c.bench_function(name, |b| b.iter(pooled));
    report_allocs(name, pooled);

    let sock = AsyncLoop {
        wire: wire.to_vec(),
        at: 0,
    };
    let mut ws = block_on(WebSocketStream::from_raw_socket(
        FrameEdge::new(sock),
        Role::Client,
        None,
    ));
    let mut attempt = || {
        let mut reader = CutThrough::new(&mut ws, true);
        let mut bytes = 0;
        for _ in 0..EVENTS_PER_READ {
            let Read::Frame(f) = block_on(reader.next()) else {
                panic!("a frame")
            };
            let ev = UpstreamEvent::classify(reader.payload(f)).expect("an event");
            black_box(ev.kind);
            bytes += f.range().len();
        }
        bytes
    };
    assert_eq!(attempt(), wire.len(), "every frame, whole");
    let name = "relay/cut_through_attempt_8_deltas";
    c.bench_function(name, |b| b.iter(&mut attempt));
    report_allocs(name, attempt);
}

/// A 30 KB client frame going upstream: `relay/client_frame_masked_again_30k` is the path for a
/// rewritten frame (and every frame before the cut-through): tungstenite copies the payload into
/// its out buffer and masks it with a fresh key; `relay/client_frame_as_it_came_30k` is an
/// unchanged frame: one write of the frame as the raw read brought it in ([`client_read`]).
/// Both end with the bytes in a socket buffer.
fn client_frame(c: &mut Criterion) {
    use shardgate::tungstenite::protocol::{Role, WebSocket};
    use shardgate::tungstenite::Message;
    use std::io::Write;

    let text = shardgate::tungstenite::Utf8Bytes::from("x".repeat(30_000));
    let sock = || Loop {
        wire: vec![0],
        at: 0,
        out: Vec::with_capacity(64 * 1024),
    };
    let up = std::cell::RefCell::new(WebSocket::from_raw_socket(sock(), Role::Client, None));
    let masked_again = || {
        let mut up = up.borrow_mut();
        up.send(Message::Text(text.clone())).expect("sent");
        let written = up.get_ref().out.len();
        up.get_mut().out.clear();
        written
    };
    let wire_len = masked_again();
    let name = "relay/client_frame_masked_again_30k";
    c.bench_function(name, |b| b.iter(masked_again));
    report_allocs(name, masked_again);

    // What the gateway sends instead: the frame built with the payload masked while it is
    // copied (`ws_frame::masked_text`), the buffer then written in one go.
    let one_pass = || masked_text(black_box(text.as_bytes()), black_box(CLIENT_KEY)).1;
    assert_eq!(one_pass(), wire_len, "the same frame");
    let name = "relay/client_frame_masked_one_pass_30k";
    c.bench_function(name, |b| b.iter(one_pass));
    report_allocs(name, one_pass);

    let wire = vec![0x5a; wire_len];
    let mut upstream = sock();
    let mut as_it_came = || {
        upstream.write_all(black_box(&wire)).expect("written");
        let written = upstream.out.len();
        upstream.out.clear();
        written
    };
    assert_eq!(as_it_came(), wire_len);
    let name = "relay/client_frame_as_it_came_30k";
    c.bench_function(name, |b| b.iter(&mut as_it_came));
    report_allocs(name, as_it_came);
}

/// An async socket that replays `wire` forever (reads never cross its end); writes are dropped.
struct AsyncLoop {
    wire: Vec<u8>,
    at: usize,
}

impl futures_lite::AsyncRead for AsyncLoop {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let n = buf.len().min(this.wire.len() - this.at);
        buf[..n].copy_from_slice(&this.wire[this.at..this.at + n]);
        this.at = (this.at + n) % this.wire.len();
        std::task::Poll::Ready(Ok(n))
    }
}

/// Always readable: its bytes never run out.
impl shardgate::net::WaitReadable for AsyncLoop {
    fn can_wait_readable(&self) -> bool {
        true
    }

    fn poll_readable(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl futures_lite::AsyncWrite for AsyncLoop {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The copy of every byte served that the session kept, before the raw read, to forward a
/// client's frame as it came (what `FrameEdge::record` did).
struct Recording<S> {
    inner: S,
    record: Vec<u8>,
}

impl<S: futures_lite::AsyncRead + Unpin> futures_lite::AsyncRead for Recording<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let read = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &read {
            this.record.extend_from_slice(&buf[..*n]);
        }
        read
    }
}

impl<S: futures_lite::AsyncWrite + Unpin> futures_lite::AsyncWrite for Recording<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A masked client text frame of `payload` (16-bit length).
fn client_text_frame(payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 126];
    out.extend_from_slice(&u16::try_from(payload.len()).expect("16-bit").to_be_bytes());
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The masking key of the client frames the benches read.
const CLIENT_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A Codex-sized `response.create` (~30 KB, non-ASCII every 37 bytes), as a client sends it.
fn codex_create_30k() -> String {
    let text = format!(
        r#"{{"type":"response.create","model":"gpt-5-codex","store":false,"input":[{{"role":"user","content":[{{"type":"input_text","text":"{}"}}]}}]}}"#,
        "Résumé the diff, then run the tests. ".repeat(800)
    );
    assert!(text.len() > 30_000 && text.len() < 0xffff);
    text
}

/// Reading a client's 30 KB `response.create` off the socket, through [`FrameEdge`], to the
/// message text (`Utf8Bytes` from the raw read, `Bytes` on the codec path) and the frame as it
/// came (`Bytes`, to forward unchanged): `client_read/codec_recording_30k` is the path before
/// the raw read (tungstenite in 16 KiB zero-filled chunks, its copy into the message and UTF-8
/// check, the recording copy of every byte served); `client_read/raw_30k` is [`read_text_frame`]
/// (the first frame: header, then exactly the rest of the frame into its buffer; the next ones
/// in one read into a buffer of the last one's size; unmasked into the text in one pass, UTF-8
/// checked once; both buffers from the shard's pool, back in it when the frame drops). Then the two steps of the raw read, each against the alternative: unmasking in one
/// pass (read, xor and write once, 8 bytes at a time) vs a copy then an xor in place (also 8
/// bytes at a time), both into a buffer that exists already; the UTF-8 check with `simdutf8`
/// vs `std::str::from_utf8`.
///
/// [`FrameEdge`]: shardgate::net::FrameEdge
/// [`read_text_frame`]: shardgate::net::client_read::read_text_frame
fn client_read(c: &mut Criterion) {
    use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use async_tungstenite::tungstenite::Message;
    use async_tungstenite::WebSocketStream;
    use bytes::Bytes;
    use futures_lite::future::block_on;
    use futures_util::StreamExt;
    use shardgate::net::client_read::{read_text_frame, FirstRead, RawRead};
    use shardgate::net::ws_frame::{mask_into, unmask_into_ascii};
    use shardgate::net::FrameEdge;

    const KEY: [u8; 4] = CLIENT_KEY;
    let text = codex_create_30k();
    let wire = client_text_frame(text.as_bytes(), KEY);
    let limit = 16 * 1024 * 1024;
    let sock = || AsyncLoop {
        wire: wire.clone(),
        at: 0,
    };

    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let recording = Recording {
        inner: FrameEdge::new(sock()),
        record: Vec::new(),
    };
    let mut ws = block_on(WebSocketStream::from_raw_socket(
        recording,
        Role::Server,
        Some(config),
    ));
    let mut codec = || {
        ws.get_mut().record = Vec::new();
        let Some(Ok(Message::Text(t))) = block_on(ws.next()) else {
            panic!("a text message")
        };
        let wire = Bytes::from(std::mem::take(&mut ws.get_mut().record));
        (Bytes::from(t), wire)
    };
    let (got_text, got_wire) = codec();
    assert_eq!((&got_text[..], &got_wire[..]), (text.as_bytes(), &wire[..]));
    let name = "client_read/codec_recording_30k";
    c.bench_function(name, |b| b.iter(&mut codec));
    report_allocs(name, codec);

    let mut edge = FrameEdge::new(sock());
    let mut first = FirstRead::default();
    let mut raw = || match block_on(read_text_frame(&mut edge, limit as u64, &mut first)) {
        RawRead::Frame(f) => (f.text, f.wire),
        _ => panic!("a raw frame"),
    };
    let (got_text, got_wire) = raw();
    assert_eq!(
        (got_text.as_bytes(), &got_wire[..]),
        (text.as_bytes(), &wire[..])
    );
    let name = "client_read/raw_30k";
    c.bench_function(name, |b| b.iter(&mut raw));
    report_allocs(name, raw);

    // Both unmask into a buffer that exists already, as the raw read's pooled one does.
    let masked = &wire[8..];
    let out = std::cell::RefCell::new(vec![0u8; masked.len()]);
    let one_pass = || {
        let mut out = out.borrow_mut();
        mask_into(black_box(masked), KEY, &mut out);
        out[out.len() - 1]
    };
    one_pass();
    assert_eq!(*out.borrow(), text.as_bytes());
    let name = "client_read/unmask_one_pass_30k";
    c.bench_function(name, |b| b.iter(one_pass));
    report_allocs(name, one_pass);
    // The raw read's unmask: the same pass, telling all-ASCII text apart (which then needs no
    // UTF-8 check, `utf8_simdutf8_30k` below). This text is not all ASCII (`é`), so this is what
    // telling costs when it does not pay: against `unmask_one_pass_30k`.
    let ascii_pass = || {
        let mut out = out.borrow_mut();
        unmask_into_ascii(black_box(masked), KEY, &mut out)
    };
    assert_eq!(ascii_pass(), text.is_ascii());
    assert_eq!(*out.borrow(), text.as_bytes());
    let name = "client_read/unmask_ascii_one_pass_30k";
    c.bench_function(name, |b| b.iter(ascii_pass));
    report_allocs(name, ascii_pass);
    let copy_then_xor = || {
        let wide = u64::from_ne_bytes([
            KEY[0], KEY[1], KEY[2], KEY[3], KEY[0], KEY[1], KEY[2], KEY[3],
        ]);
        let mut out = out.borrow_mut();
        out.copy_from_slice(black_box(masked));
        let mut words = out.chunks_exact_mut(8);
        for w in &mut words {
            let x = u64::from_ne_bytes((&*w).try_into().expect("8 bytes")) ^ wide;
            w.copy_from_slice(&x.to_ne_bytes());
        }
        for (b, k) in words.into_remainder().iter_mut().zip(KEY.iter().cycle()) {
            *b ^= k;
        }
        out[out.len() - 1]
    };
    copy_then_xor();
    assert_eq!(*out.borrow(), text.as_bytes());
    let name = "client_read/unmask_copy_then_xor_30k";
    c.bench_function(name, |b| b.iter(copy_then_xor));
    report_allocs(name, copy_then_xor);

    let name = "client_read/utf8_simdutf8_30k";
    c.bench_function(name, |b| {
        b.iter(|| simdutf8::basic::from_utf8(black_box(text.as_bytes())).is_ok())
    });
    let name = "client_read/utf8_std_30k";
    c.bench_function(name, |b| {
        b.iter(|| std::str::from_utf8(black_box(text.as_bytes())).is_ok())
    });
}

/// A client socket with nothing to read (a client waiting for its events); writes are dropped.
struct Idle;

impl futures_lite::AsyncRead for Idle {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        _buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Pending
    }
}

impl futures_lite::AsyncWrite for Idle {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Watching a client that sends nothing while its turn relays events: the relay polls its
/// client once per upstream read. `client_watch/codec_poll_idle` is a poll of the client
/// WebSocket as before (tungstenite zero-fills its 16 KiB read chunk, then the socket has
/// nothing); `client_watch/readable_poll_idle` is [`readable`] (a read of at most a header
/// into a stack buffer).
///
/// [`readable`]: shardgate::net::client_read::readable
fn client_watch(c: &mut Criterion) {
    use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use async_tungstenite::WebSocketStream;
    use futures_lite::future::{block_on, poll_once};
    use futures_util::StreamExt;
    use shardgate::net::client_read::readable;
    use shardgate::net::FrameEdge;

    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let mut ws = block_on(WebSocketStream::from_raw_socket(
        FrameEdge::new(Idle),
        Role::Server,
        Some(config),
    ));
    let mut codec = || block_on(poll_once(ws.next())).is_none();
    assert!(codec(), "nothing to read");
    let name = "client_watch/codec_poll_idle";
    c.bench_function(name, |b| b.iter(&mut codec));
    report_allocs(name, codec);

    let mut edge = FrameEdge::new(Idle);
    let mut raw = || block_on(poll_once(readable(&mut edge))).is_none();
    assert!(raw(), "nothing to read");
    let name = "client_watch/readable_poll_idle";
    c.bench_function(name, |b| b.iter(&mut raw));
    report_allocs(name, raw);
}

/// A client's 30 KB `response.create` from the socket to the turn's first check, where a turn
/// starts (issue 12: a frame's UTF-8 checked once): `turn_check/raw_read_then_check_30k` is
/// [`read_text_frame`] then `turn::frame::check` on the text it hands on;
/// `turn_check/check_30k` is that check alone, on a frame already read.
///
/// [`read_text_frame`]: shardgate::net::client_read::read_text_frame
fn turn_check(c: &mut Criterion) {
    use futures_lite::future::block_on;
    use shardgate::net::client_read::{read_text_frame, FirstRead, RawRead};
    use shardgate::net::FrameEdge;
    use shardgate::shard::turn::frame::check;

    let wire = client_text_frame(codex_create_30k().as_bytes(), CLIENT_KEY);
    let mut edge = FrameEdge::new(AsyncLoop { wire, at: 0 });
    let mut first = FirstRead::default();
    let mut read = move || match block_on(read_text_frame(&mut edge, 1 << 24, &mut first)) {
        RawRead::Frame(f) => f.text,
        _ => panic!("a raw frame"),
    };
    let text = read();
    assert!(check(&text).is_ok(), "a valid response.create");
    let mut read_then_check = || check(black_box(&read())).is_ok();
    let name = "turn_check/raw_read_then_check_30k";
    c.bench_function(name, |b| b.iter(&mut read_then_check));
    report_allocs(name, read_then_check);

    let check_alone = || check(black_box(&text)).is_ok();
    let name = "turn_check/check_30k";
    c.bench_function(name, |b| b.iter(check_alone));
    report_allocs(name, check_alone);
}

/// A small glommio executor on this thread, for benches that poll real timers and sockets.
fn bench_executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 * 1024)
        .make()
        .expect("executor starts")
}

/// The relay's silence timer, polled once per batch of events while it waits: a glommio sleep
/// polled as it is (the timer takes itself out of the reactor's timer map and puts itself back
/// on every poll), and the client task's `Deadline` the relay waits on (one clock read once
/// armed; set again per batch, no timer built per turn).
fn silence_timer(c: &mut Criterion) {
    use shardgate::shard::armed_timer::shard_deadline;
    use std::future::Future;
    use std::task::Context;

    let executor = bench_executor();
    executor.run(async {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let hour = Duration::from_secs(3600);
        let mut sleep = std::pin::pin!(shardgate::runtime::sleep(hour));
        let mut poll_sleep = || sleep.as_mut().poll(&mut cx).is_pending();
        assert!(poll_sleep());
        let name = "relay/silence_timer_poll_glommio";
        c.bench_function(name, |b| b.iter(&mut poll_sleep));
        report_allocs(name, &mut poll_sleep);

        let mut cx = Context::from_waker(&waker);
        let mut deadline = shard_deadline();
        deadline.set(std::time::Instant::now() + hour);
        let mut poll_armed = || std::pin::pin!(deadline.wait()).poll(&mut cx).is_pending();
        assert!(poll_armed());
        let name = "relay/silence_timer_poll_deadline";
        c.bench_function(name, |b| b.iter(&mut poll_armed));
        report_allocs(name, &mut poll_armed);
    });
}

/// A future that is pending at its first poll and ready at its second: a client frame that
/// arrives after the session began waiting for it.
struct ArrivesSecond(bool);

impl std::future::Future for ArrivesSecond {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

/// One wait of a session for its client's next frame, from the end of a turn (`waiting_since`
/// read) to the frame: polled once before the frame arrives and once when it did, then torn
/// down. Before: what is left of the wait worked out from the clock (three reads) and a glommio
/// timer built for it under `runtime::timeout` (an allocation, a timer-map insert on the first
/// poll, a removal on drop). After: the session's one `Deadline` set to `waiting_since +
/// timeout` (moved later: the registered timer is left alone).
fn frame_wait(c: &mut Criterion) {
    use shardgate::shard::armed_timer::Deadline;
    use std::future::Future;
    use std::task::Context;

    let executor = bench_executor();
    executor.run(async {
        let waker = futures_util::task::noop_waker();
        let timeout = Duration::from_secs(300);
        let mut cx = Context::from_waker(&waker);
        let mut timer_per_frame = || {
            let waiting_since = Instant::now();
            let deadline = Instant::now() + timeout.saturating_sub(waiting_since.elapsed());
            let wait = deadline.saturating_duration_since(Instant::now());
            let mut read = std::pin::pin!(shardgate::runtime::timeout(wait, ArrivesSecond(false)));
            assert!(read.as_mut().poll(&mut cx).is_pending());
            read.as_mut().poll(&mut cx).is_ready()
        };
        assert!(timer_per_frame());
        let name = "session/frame_wait_timer_per_frame";
        c.bench_function(name, |b| b.iter(&mut timer_per_frame));
        report_allocs(name, &mut timer_per_frame);

        let mut cx = Context::from_waker(&waker);
        let mut deadline = Deadline::new(shardgate::runtime::Timer::new(Duration::ZERO));
        let mut one_timer = || {
            let waiting_since = Instant::now();
            deadline.set(waiting_since + timeout);
            let mut read = std::pin::pin!(futures_lite::future::or(
                futures_util::FutureExt::map(ArrivesSecond(false), Some),
                async {
                    deadline.wait().await;
                    None
                }
            ));
            assert!(read.as_mut().poll(&mut cx).is_pending());
            matches!(
                read.as_mut().poll(&mut cx),
                std::task::Poll::Ready(Some(()))
            )
        };
        assert!(one_timer());
        let name = "session/frame_wait_one_timer";
        c.bench_function(name, |b| b.iter(&mut one_timer));
        report_allocs(name, &mut one_timer);
    });
}

/// The labeled counters a turn bumps (`affinity`, `terminal`, `normalizer`, a dial by account),
/// on a shard whose counters already hold the families and labels a running gateway has.
fn labeled_counters(c: &mut Criterion) {
    use shardgate::shard::counters::ShardCounters;

    let counters = ShardCounters::default();
    for (family, labels) in [
        (
            "affinity",
            &[
                "new",
                "connection_reused",
                "connection_gone",
                "connection_busy",
            ][..],
        ),
        ("terminal", &["completed", "failed", "incomplete", "error"]),
        (
            "normalizer",
            &["inject_verified", "store_enabled", "unknown_pending_kept"],
        ),
        (
            "sticky",
            &["hit", "store_hit", "store_miss", "write_dropped"],
        ),
        ("dials", &["acct-a", "acct-b", "acct-c", "acct-d"]),
        ("retries", &["timeout", "5xx", "reset"]),
        ("client_closes", &["normal", "going_away", "error"]),
        ("preemptions", &["unsent", "settled", "drained"]),
        ("handoff", &["received", "sent"]),
        ("close_codes", &["1000", "1001", "1011"]),
    ] {
        for label in labels {
            counters.bump_labeled(family, label);
        }
    }
    let turn = || {
        counters.bump_labeled("affinity", "connection_reused");
        counters.bump_labeled("normalizer", "inject_verified");
        counters.bump_labeled("terminal", "completed");
        counters.bump_labeled("dials", "acct-c");
    };
    let name = "counters/bump_labeled_4_per_turn";
    c.bench_function(name, |b| b.iter(turn));
    report_allocs(name, turn);
}

criterion_group! {
    name = benches;
    config = config();
    targets = pool, silence_timer, frame_wait, histograms, sticky_cache, relay, client_frame, client_read, client_watch, turn_check, labeled_counters
}
criterion_main!(benches);
