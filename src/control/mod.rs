//! The control thread: everything slow or global, kept off the shards.
//!
//! Shards talk to it only through [`ControlHandle::send`], a non-blocking `try_send` on a bounded
//! crossbeam queue: a full queue is counted and the message dropped, a shard never waits. The
//! thread owns the usage sink, the stats aggregation and the sticky-state store
//! ([`StateService`]); it ticks on a timer to flush and roll windows, and drains everything on
//! shutdown, and judges the accounts' WebSocket health for the automatic rollback
//! ([`rollback`]). State lookups are answered through the one-shot sender inside the message; a Redis
//! call may hold this thread for at most `[state] redis_timeout_ms`, never a shard.

pub mod rollback;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::config::Config;
use crate::metrics::aggregate::{self, Aggregator, SharedAggregator};
use crate::metrics::ShardSnapshot;
use crate::oauth::OAuthRegistry;
use crate::reload::LiveSettings;
use crate::state::service::{StateMsg, StateService};
use crate::state::{StateError, StateStats};
use crate::stats::{StatsError, StatsServices};
use crate::usage::writer::{UsageWriter, UsageWriterError};
use crate::usage::UsageRecord;
use rollback::RollbackGuard;

/// How often the control thread drains its queue while messages arrive. It never blocks on the
/// queue: a blocked receiver would turn every shard `try_send` into a futex wake-up (a syscall on
/// the shard's per-turn path, two messages per turn) and a context switch here. Polling costs
/// one wake-up per interval however many messages arrived, at the price of up to this much delay
/// for a usage record or a state write. A state lookup, which a turn waits for, wakes the thread
/// at once ([`ControlHandle::ask`]).
const BUSY_POLL: Duration = Duration::from_millis(5);

/// The longest poll interval once the queue has been empty for a while.
const IDLE_POLL: Duration = Duration::from_millis(16);

/// Capacity of the shard → control queue.
pub const QUEUE_CAPACITY: usize = 65_536;

/// A message from a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// A turn ended: write its usage record.
    Usage(Box<UsageRecord>),
    /// A shard's measurements for the last interval.
    Snapshot(Box<ShardSnapshot>),
    /// A sticky-state write or lookup.
    State(StateMsg),
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

/// The shards' side of the control queue. Cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    tx: Sender<ShardMsg>,
    state_stats: Arc<StateStats>,
    thread: std::thread::Thread,
}

impl ControlHandle {
    /// Queues `msg` without waiting; `false` when the queue is full or the control thread is
    /// gone (the caller counts the drop in its shard's `control_queue_drops`). The thread picks
    /// it up on its next poll.
    pub fn send(&self, msg: ShardMsg) -> bool {
        self.tx.try_send(msg).is_ok()
    }

    /// Queues a usage record without waiting; hands it back when the queue is full, for the
    /// shard to hold and offer again (`shard::usage_outbox`): records are billing.
    pub fn offer_usage(&self, record: Box<UsageRecord>) -> Result<(), Box<UsageRecord>> {
        self.tx
            .try_send(ShardMsg::Usage(record))
            .map_err(|e| match e.into_inner() {
                ShardMsg::Usage(record) => record,
                _ => unreachable!("try_send hands back the message it was given"),
            })
    }

    /// Queues a message someone waits for (a state lookup) and wakes the control thread so it
    /// is answered now rather than on the next poll. One wake-up (a syscall) per call: for
    /// lookups, which are rare, not for the writes every turn makes.
    pub fn ask(&self, msg: ShardMsg) -> bool {
        let queued = self.send(msg);
        if queued {
            self.thread.unpark();
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
        let mut control = Control {
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
        let handle = ControlHandle {
            tx,
            state_stats,
            thread: thread.thread().clone(),
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
        let mut poll = BUSY_POLL;
        'serve: loop {
            let mut drained = 0usize;
            loop {
                match rx.try_recv() {
                    Ok(msg) => {
                        self.handle(msg);
                        drained += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'serve,
                }
            }
            if !matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
                break;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.usage.tick(now);
                self.publish(now);
                self.state.tick(now);
                next_tick = now + self.tick;
            }
            poll = if drained > 0 {
                BUSY_POLL
            } else {
                (poll * 2).min(IDLE_POLL)
            };
            // Woken early by `ControlHandle::ask` (or spuriously): the loop just drains again.
            std::thread::park_timeout(poll.min(next_tick.saturating_duration_since(now)));
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
        let mut counters = self.usage.counters();
        for (name, v) in self.state.stats().values() {
            counters.insert(name.to_string(), v);
        }
        let mut labeled = self.usage.labeled();
        let (oauth_counters, oauth_labeled) = self.oauth.counters();
        counters.extend(oauth_counters);
        labeled.extend(oauth_labeled);
        labeled.extend(self.rollback.labeled());
        agg.set_control(counters, labeled);
    }

    fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Usage(rec) => self.usage.push(*rec),
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
            thread: std::thread::current(),
        };
        let record = |id: &str| Box::new(UsageRecord::sample(id));
        assert!(handle.offer_usage(record("resp_1")).is_ok());
        let back = handle
            .offer_usage(record("resp_2"))
            .expect_err("queue is full");
        assert_eq!(back.response_id, "resp_2");
        assert!(matches!(rx.try_recv(), Ok(ShardMsg::Usage(r)) if r.response_id == "resp_1"));
        assert!(handle.offer_usage(back).is_ok());
    }
}
