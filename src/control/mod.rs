//! The control thread: everything slow or global, kept off the shards.
//!
//! Shards talk to it only through [`ControlHandle::send`], a non-blocking `try_send` on a bounded
//! crossbeam queue: a full queue is counted and the message dropped, a shard never waits. The
//! thread owns the usage sink, the stats aggregation and the sticky-state store
//! ([`StateService`]); it ticks on a timer to flush and roll windows, and drains everything on
//! shutdown, and judges the accounts' WebSocket health for the automatic rollback
//! ([`rollback`]).
//!
//! It sleeps until its next tick unless someone needs it sooner: a state lookup a turn waits
//! for ([`ControlHandle::ask`]), a queue filling up ([`WAKE_AT`]), shutdown. Each wake drains
//! the whole queue, so the messages of a tick's worth of turns cost one wake-up, and writes
//! (usage records, state writes) never wake it: a shard's `try_send` to a thread that is not
//! blocked on the queue makes no syscall. A lookup still sees every write queued before it
//! (one FIFO queue, drained in order). State lookups are answered through the one-shot sender inside the message; a Redis
//! call may hold this thread for at most `[state] redis_timeout_ms`, never a shard.

pub mod rollback;

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::config::Config;
use crate::metrics::aggregate::{self, Aggregator, SharedAggregator};
use crate::metrics::ShardSnapshot;
use crate::oauth::OAuthRegistry;
use crate::reload::LiveSettings;
use crate::state::service::{StateMsg, StateService};
use crate::state::{StateError, StateStats, TurnState};
use crate::stats::{StatsError, StatsServices};
use crate::usage::writer::{UsageWriter, UsageWriterError};
use crate::usage::UsageRecord;
use rollback::RollbackGuard;

/// Queue length past which a shard wakes the control thread before its tick: the thread drains
/// the queue only on its tick or when woken, and this keeps a burst from filling the queue
/// between two ticks (a shard's `send` checks it; the wake happens once per drain).
const WAKE_AT: usize = QUEUE_CAPACITY / 8;

/// Capacity of the shard → control queue.
pub const QUEUE_CAPACITY: usize = 65_536;

/// A message from a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// A turn ended: write its usage record.
    Usage(Box<UsageRecord>),
    /// A turn that produced a response ended: write its usage record and its sticky state.
    Turn(Box<TurnReport>),
    /// A shard's measurements for the last interval.
    Snapshot(Box<ShardSnapshot>),
    /// A sticky-state write or lookup.
    State(StateMsg),
}

/// What a turn that produced a response sends the control thread: its usage record and the
/// sticky state it left, in one message (one allocation and one queue slot per turn instead of
/// two). The two keep their own rules for a full queue: the record is held by the shard
/// (`shard::usage_outbox`), the state is dropped and counted.
#[derive(Debug)]
pub struct TurnReport {
    /// The turn's usage record (billing).
    pub usage: UsageRecord,
    /// What the turn left for later turns (binding, pending calls, session's last response).
    pub state: TurnState,
}

/// Why the control thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The usage sink could not be opened.
    #[error("usage sink: {0}")]
    Usage(#[from] UsageWriterError),
    /// The state store could not be opened.
    #[error("state store: {0}")]
    State(#[from] StateError),
    /// The thread could not be spawned.
    #[error("cannot start the control thread: {0}")]
    Thread(std::io::Error),
    /// The stats socket or admin listener could not start.
    #[error("{0}")]
    Stats(#[from] StatsError),
}

/// Wakes the control thread before its tick, once per drain however many ask: `pending` is set
/// by the first waker and cleared by the thread before it drains, so a burst of lookups costs
/// one `unpark` (a syscall) rather than one each.
struct Waker {
    /// The control thread, once spawned (nothing can ask before `ControlThread::start`
    /// returns the handle).
    thread: OnceLock<std::thread::Thread>,
    pending: AtomicBool,
    /// Times the thread woke (ticks, wakes and spurious returns alike), for `control_wakeups`.
    wakeups: AtomicU64,
    /// Times it did its periodic work, for `control_ticks`.
    ticks: AtomicU64,
}

impl Waker {
    fn new() -> Self {
        Waker {
            thread: OnceLock::new(),
            pending: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
        }
    }

    /// Wakes the thread unless a wake is already pending. Call after queueing the message the
    /// wake is for: the thread clears `pending` before it drains, so it sees that message.
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Called by the thread on waking, before it drains the queue.
    fn woken(&self) {
        self.pending.store(false, Ordering::Release);
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }
}

/// The shards' side of the control queue. Cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    tx: Sender<ShardMsg>,
    state_stats: Arc<StateStats>,
    waker: Arc<Waker>,
}

impl ControlHandle {
    /// Queues `msg` without waiting; `false` when the queue is full or the control thread is
    /// gone (the caller counts the drop in its shard's `control_queue_drops`). The thread picks
    /// it up on its next tick, or sooner once the queue holds [`WAKE_AT`] messages.
    pub fn send(&self, msg: ShardMsg) -> bool {
        let queued = self.tx.try_send(msg).is_ok();
        if queued {
            self.wake_if_filling();
        }
        queued
    }

    /// Queues a usage record without waiting; hands it back when the queue is full, for the
    /// shard to hold and offer again (`shard::usage_outbox`): records are billing.
    pub fn offer_usage(&self, record: Box<UsageRecord>) -> Result<(), Box<UsageRecord>> {
        self.offer(ShardMsg::Usage(record), |back| match back {
            ShardMsg::Usage(record) => record,
            _ => unreachable!("try_send hands back the message it was given"),
        })
    }

    /// Queues a turn's usage record and sticky state as one message without waiting; hands the
    /// turn back when the queue is full (the shard holds its record, drops its state).
    pub fn offer_turn(&self, turn: Box<TurnReport>) -> Result<(), Box<TurnReport>> {
        self.offer(ShardMsg::Turn(turn), |back| match back {
            ShardMsg::Turn(turn) => turn,
            _ => unreachable!("try_send hands back the message it was given"),
        })
    }

    /// Queues `msg`, or hands what it carries back (`back`) when the queue is full.
    fn offer<T>(&self, msg: ShardMsg, back: impl FnOnce(ShardMsg) -> T) -> Result<(), T> {
        self.tx.try_send(msg).map_err(|e| back(e.into_inner()))?;
        self.wake_if_filling();
        Ok(())
    }

    /// Wakes the control thread before its tick once the queue holds [`WAKE_AT`] messages.
    fn wake_if_filling(&self) {
        if self.tx.len() >= WAKE_AT {
            self.waker.wake();
        }
    }

    /// Queues a message someone waits for (a state lookup) and wakes the control thread so it
    /// is answered now rather than on its tick. At most one wake-up (a syscall) per drain: for
    /// lookups, which are rare, not for the writes every turn makes.
    pub fn ask(&self, msg: ShardMsg) -> bool {
        let queued = self.tx.try_send(msg).is_ok();
        if queued {
            self.waker.wake();
        }
        queued
    }

    /// The state store's health counters (Redis errors, fallbacks), for stats.
    pub fn state_stats(&self) -> &Arc<StateStats> {
        &self.state_stats
    }
}

/// The running control thread.
pub struct ControlThread {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: StatsServices,
}

impl ControlThread {
    /// Opens the usage sink and starts the thread; the rollback guard acts on `live`, the
    /// settings the shards read, and the counters of its OAuth accounts are published.
    pub fn start(
        config: Arc<Config>,
        live: Arc<LiveSettings>,
    ) -> Result<(ControlHandle, ControlThread), ControlError> {
        let (tx, rx) = bounded(QUEUE_CAPACITY);
        let (stop_tx, stop_rx) = bounded(1);
        let usage = UsageWriter::open(&config.usage, config.state.redis_timeout)?;
        let s = &config.server;
        let aggregator: SharedAggregator = Arc::new(std::sync::Mutex::new(Aggregator::new(
            s.shards,
            s.stats_interval,
            s.stats_window,
        )));
        let state = StateService::open(&config.state)?;
        let state_stats = state.stats();
        let stats = StatsServices::start(s, &aggregator)?;
        let waker = Arc::new(Waker::new());
        let mut control = Control {
            waker: waker.clone(),
            usage,
            aggregator,
            state,
            oauth: live.oauth.clone(),
            rollback: RollbackGuard::new(&config, live),
            tick: config.server.stats_interval.min(Duration::from_millis(200)),
        };
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control.run(rx, stop_rx))
            .map_err(ControlError::Thread)?;
        let _ = waker.thread.set(thread.thread().clone());
        let handle = ControlHandle {
            tx,
            state_stats,
            waker,
        };
        Ok((
            handle,
            ControlThread {
                stop: Some(stop_tx),
                thread: Some(thread),
                stats,
            },
        ))
    }

    /// The admin listener's address, when one is configured (the real port for port 0).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.stats.admin_addr()
    }

    /// Drains the queue, flushes the sink and joins the thread. Call after the shards stopped.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.stats.stop();
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Control {
    waker: Arc<Waker>,
    usage: UsageWriter,
    aggregator: SharedAggregator,
    state: StateService,
    oauth: Arc<OAuthRegistry>,
    rollback: RollbackGuard,
    tick: Duration,
}

impl Control {
    fn run(&mut self, rx: Receiver<ShardMsg>, stop: Receiver<()>) {
        let mut next_tick = Instant::now() + self.tick;
        'serve: loop {
            self.waker.woken();
            loop {
                match rx.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'serve,
                }
            }
            if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                break;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.waker.ticks.fetch_add(1, Ordering::Relaxed);
                self.usage.tick(now);
                self.publish(now);
                self.state.tick(now);
                // The next tick keeps its cadence (a late wake does not push every later one
                // back), but never falls due at once again after a long stall.
                next_tick = (next_tick + self.tick).max(now + self.tick / 2);
            }
            // Until the tick, unless woken: by a lookup, a filling queue or shutdown (or
            // spuriously: the loop just drains again).
            std::thread::park_timeout(next_tick.saturating_duration_since(Instant::now()));
        }
        // Whatever the shards queued before they stopped is still written.
        while let Ok(msg) = rx.try_recv() {
            self.handle(msg);
        }
        self.usage.shutdown();
        self.state.shutdown();
        self.publish(Instant::now());
    }

    /// Judges the rollback thresholds, rolls the stats window and publishes the control
    /// thread's counters.
    fn publish(&mut self, now: Instant) {
        self.rollback.tick(now);
        let mut agg = aggregate::lock(&self.aggregator);
        agg.tick(now);
        agg.write_control(|out| {
            self.usage.write_counters(out);
            for (name, a) in [
                ("control_wakeups", &self.waker.wakeups),
                ("control_ticks", &self.waker.ticks),
            ] {
                out.counter(name, a.load(Ordering::Relaxed));
            }
            for (name, v) in self.state.stats().values() {
                out.counter(name, v);
            }
            self.oauth.write_counters(out);
            self.rollback.write_labeled(out);
        });
    }

    fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Usage(rec) => self.usage.push(*rec),
            ShardMsg::Turn(turn) => {
                let TurnReport { usage, state } = *turn;
                self.state.put_turn(state);
                self.usage.push(usage);
            }
            ShardMsg::Snapshot(mut snap) => {
                let accounts = std::mem::take(&mut snap.accounts);
                self.rollback.add(Instant::now(), accounts);
                aggregate::lock(&self.aggregator).merge(*snap);
            }
            ShardMsg::State(msg) => self.state.handle(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_hands_the_usage_record_back() {
        let (tx, rx) = bounded(1);
        let handle = ControlHandle {
            tx,
            state_stats: Arc::default(),
            waker: Arc::new(Waker::new()),
        };
        let record = |id: &str| Box::new(UsageRecord::sample(id));
        assert!(handle.offer_usage(record("resp_1")).is_ok());
        let back = handle
            .offer_usage(record("resp_2"))
            .expect_err("queue is full");
        assert_eq!(&*back.response_id, "resp_2");
        assert!(matches!(rx.try_recv(), Ok(ShardMsg::Usage(r)) if &*r.response_id == "resp_1"));
        assert!(handle.offer_usage(back).is_ok());
    }

    #[test]
    fn a_turns_record_and_state_take_one_slot_and_come_back_whole_when_full() {
        let (tx, rx) = bounded(1);
        let handle = ControlHandle {
            tx,
            state_stats: Arc::default(),
            waker: Arc::new(Waker::new()),
        };
        let turn = |id: &str| {
            Box::new(TurnReport {
                usage: UsageRecord::sample(id),
                state: TurnState {
                    group: "g".into(),
                    response_id: id.into(),
                    binding: crate::state::Binding {
                        account: "acct-1".into(),
                        instance: "host-a".into(),
                        shard: 0,
                        connection: 1,
                    },
                    session: None,
                    pending: None,
                },
            })
        };
        assert!(handle.offer_turn(turn("resp_1")).is_ok());
        let back = handle
            .offer_turn(turn("resp_2"))
            .expect_err("queue is full");
        assert_eq!(&*back.usage.response_id, "resp_2");
        assert_eq!(&*back.state.response_id, "resp_2");
        match rx.try_recv() {
            Ok(ShardMsg::Turn(t)) => {
                assert_eq!(&*t.usage.response_id, "resp_1");
                assert_eq!(&*t.state.response_id, "resp_1");
            }
            other => panic!("expected one turn message, got {other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_filling_queue_wakes_the_control_thread_once() {
        let (tx, rx) = bounded(QUEUE_CAPACITY);
        let handle = ControlHandle {
            tx,
            state_stats: Arc::default(),
            waker: Arc::new(Waker::new()),
        };
        let waker = &handle.waker;
        let usage = |i: usize| Box::new(UsageRecord::sample(format!("resp_{i}")));
        for i in 0..WAKE_AT - 1 {
            assert!(handle.offer_usage(usage(i)).is_ok());
        }
        assert!(!waker.pending.load(Ordering::Acquire), "woken too early");
        assert!(handle.send(ShardMsg::Usage(usage(WAKE_AT))));
        assert!(
            waker.pending.load(Ordering::Acquire),
            "not woken at WAKE_AT"
        );
        // The thread drains after waking: the next wake is for the next burst.
        waker.woken();
        while rx.try_recv().is_ok() {}
        assert!(handle.offer_usage(usage(0)).is_ok());
        assert!(!waker.pending.load(Ordering::Acquire));
    }
}
