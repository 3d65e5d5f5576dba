//! Per-turn bookkeeping after a terminal event, end to end through the public APIs: the usage
//! writer taking one record (encoding it into the sink's batch), the sticky-state write on the
//! shard cache and again on the control thread's store, and the shard's interval snapshot.
//!
//! Each bench is timed by criterion, then run again under the counting allocator and reported as
//! one line: `ALLOC <name>: <allocs>/op <bytes> B/op`. See `benches/README.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::control::{ShardMsg, TurnReport};
use shardgate::metrics::{Hist, ShardMetrics};
use shardgate::protocol::Usage;
use shardgate::state::embedded::{EmbeddedBackend, EmbeddedStore};
use shardgate::state::service::StateMsg;
use shardgate::state::{StateStats, StateStore, TurnState};
use shardgate::usage::file::FileSink;
use shardgate::usage::spool::Spool;
use shardgate::usage::writer::UsageWriter;
use shardgate::usage::{RequestType, UsageRecord};

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

/// A completed Codex-shaped WebSocket turn's record.
fn record() -> UsageRecord {
    UsageRecord {
        response_id: "resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e5f6a7b8c9d0e1f2a".into(),
        ts_ms: 1_763_900_000_000,
        group: "default".into(),
        key_id: "team-a".into(),
        account: "acct-0".into(),
        model: "gpt-5-codex".into(),
        request_type: RequestType::Ws,
        usage: Usage {
            input_tokens: 28411,
            cached_tokens: 27648,
            output_tokens: 412,
            reasoning_tokens: 256,
            total_tokens: 28823,
        },
        ttft_us: Some(1834),
        duration_us: 5_210_000,
        attempts: 1,
        status: "completed".into(),
        instance: "gw-1".into(),
        shard: 0,
        realtime: None,
    }
}

/// The control thread taking one usage record into a file sink (`/dev/null`): encoding and
/// batching, a 256-record write every 256 pushes. The record is cloned per push, as the
/// shard builds a fresh one per turn; `usage/record_clone` is that clone alone (its names are
/// shared strings, as `Driver::record_usage` shares them; the turn's one allocation of its
/// response id, shared with the sticky state, is in `state/turn_cache_and_store`).
fn usage(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = FileSink::open(std::path::Path::new("/dev/null"), u64::MAX).expect("/dev/null");
    let spool = Spool::open(dir.path(), 1 << 20).expect("spool");
    let mut writer = UsageWriter::with_sink(Box::new(sink), spool, Duration::from_secs(86_400));
    let rec = record();
    let name = "usage/record_clone";
    c.bench_function(name, |b| b.iter(|| black_box(&rec).clone()));
    report_allocs(name, || black_box(&rec).clone());
    let name = "usage/writer_push";
    c.bench_function(name, |b| b.iter(|| writer.push(black_box(&rec).clone())));
    report_allocs(name, || writer.push(black_box(&rec).clone()));
    assert_eq!(writer.stats().dropped, 0);
}

/// One turn's sticky-state write as a turn makes it: the shard builds the turn's state, puts it
/// in its cache and sends it; the control thread puts it in its store. Ids are new every turn
/// (upstream ids never repeat) and sessions cycle, so the stores evict at capacity as a steady
/// state does.
fn state(c: &mut Criterion) {
    let mut cache = EmbeddedStore::new(Duration::from_secs(3600), 65_536);
    let mut store = EmbeddedBackend::new(
        EmbeddedStore::new(Duration::from_secs(3600), 65_536),
        Arc::new(StateStats::default()),
    );
    let sessions = sticky::sessions();
    let binding = sticky::binding();
    let group: Arc<str> = Arc::from("default");
    let prefix = "resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e5f6a7b8c9d";
    let ids: Vec<String> = (0..200_000u32).map(|i| format!("{prefix}{i:07}")).collect();
    let mut n = 0usize;
    // As `Driver::remember` builds it: the names are the shard's shared strings, the id is new.
    let mut turn = move |cache: &mut EmbeddedStore, store: &mut EmbeddedBackend| {
        n = (n + 1) % ids.len();
        let state = TurnState {
            group: group.clone(),
            response_id: Arc::from(ids[n].as_str()),
            binding: binding.clone(),
            session: Some(sessions[n % sessions.len()]),
            pending: None,
        };
        cache.put_turn_at(&state, Instant::now());
        let sent = Box::new(state);
        store.put_turn(*sent);
    };
    for _ in 0..70_000 {
        turn(&mut cache, &mut store);
    }
    let name = "state/turn_cache_and_store";
    c.bench_function(name, |b| b.iter(|| turn(&mut cache, &mut store)));
    report_allocs(name, || turn(&mut cache, &mut store));
}

/// A turn's way from the shard to the control thread's store and usage writer, as two messages
/// (a state write, then the usage record: before session 10) and as one ([`TurnReport`]): the
/// shard builds the state and the record, puts the state in its cache and sends; the control
/// thread receives, puts the state in its store and pushes the record to the writer
/// (`/dev/null`). Same thread, through a bounded crossbeam queue like the control queue. New ids
/// every turn, stores at capacity as in `state/turn_cache_and_store`.
fn to_control(c: &mut Criterion) {
    for merged in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let sink = FileSink::open(std::path::Path::new("/dev/null"), u64::MAX).expect("/dev/null");
        let spool = Spool::open(dir.path(), 1 << 20).expect("spool");
        let mut writer = UsageWriter::with_sink(Box::new(sink), spool, Duration::from_secs(86_400));
        let mut cache = EmbeddedStore::new(Duration::from_secs(3600), 65_536);
        let mut store = EmbeddedBackend::new(
            EmbeddedStore::new(Duration::from_secs(3600), 65_536),
            Arc::new(StateStats::default()),
        );
        let (tx, rx) = crossbeam_channel::bounded::<ShardMsg>(1024);
        let sessions = sticky::sessions();
        let binding = sticky::binding();
        let template = record();
        let prefix = "resp_68f0c2a1b3e4819c9d7a5e2f1b0c3d4e5f6a7b8c9d";
        let ids: Vec<String> = (0..200_000u32).map(|i| format!("{prefix}{i:07}")).collect();
        let mut n = 0usize;
        let mut turn = move || {
            n = (n + 1) % ids.len();
            let id: Arc<str> = Arc::from(ids[n].as_str());
            let state = TurnState {
                group: template.group.clone(),
                response_id: id.clone(),
                binding: binding.clone(),
                session: Some(sessions[n % sessions.len()]),
                pending: None,
            };
            cache.put_turn_at(&state, Instant::now());
            let mut usage = template.clone();
            usage.response_id = id;
            if merged {
                let sent = tx.try_send(ShardMsg::Turn(Box::new(TurnReport { usage, state })));
                assert!(sent.is_ok());
            } else {
                let sent = tx.try_send(ShardMsg::State(StateMsg::Turn(Box::new(state))));
                assert!(sent.is_ok());
                assert!(tx.try_send(ShardMsg::Usage(Box::new(usage))).is_ok());
            }
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    ShardMsg::Turn(t) => {
                        let TurnReport { usage, state } = *t;
                        store.put_turn(state);
                        writer.push(usage);
                    }
                    ShardMsg::State(StateMsg::Turn(t)) => store.put_turn(*t),
                    ShardMsg::Usage(r) => writer.push(*r),
                    _ => unreachable!("the bench sends turns only"),
                }
            }
        };
        for _ in 0..70_000 {
            turn();
        }
        let name = if merged {
            "turn/to_control_one_message"
        } else {
            "turn/to_control_two_messages"
        };
        c.bench_function(name, |b| b.iter(&mut turn));
        report_allocs(name, &mut turn);
    }
}

/// The shard's snapshot each stats interval after 400 Codex-shaped turns (16 events each) at
/// realistic latencies: only the histograms that recorded anything have anything to take.
fn snapshot(c: &mut Criterion) {
    let metrics = ShardMetrics::default();
    let mut us = 1u64;
    let mut next = move |max: u64| {
        us = (us * 7 + 13) % max + 1;
        Duration::from_micros(us)
    };
    let mut interval = |metrics: &ShardMetrics| {
        for _ in 0..400 {
            metrics.record(Hist::ClientTtft, next(400_000));
            metrics.record(Hist::UpstreamTtftWs, next(400_000));
            metrics.record(Hist::TurnDuration, next(5_000_000));
            metrics.record(Hist::AcquireWait, next(50));
            metrics.record_n(Hist::EventAddedWs, next(200), 16);
        }
        metrics.take_interval()
    };
    let name = "metrics/interval_400_turns";
    c.bench_function(name, |b| b.iter(|| interval(&metrics)));
    report_allocs(name, || interval(&metrics));
    let name = "metrics/take_interval_idle";
    c.bench_function(name, |b| b.iter(|| metrics.take_interval()));
    report_allocs(name, || metrics.take_interval());
}

criterion_group! {
    name = benches;
    config = config();
    targets = usage, state, to_control, snapshot
}
criterion_main!(benches);
