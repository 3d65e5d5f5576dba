//! One client connection running its turns.
//!
//! A session opens its connection lazily, runs turns one after another, and after any failed
//! turn (error event, close, timeout) drops the connection and forgets its chain, opening a new
//! one for the next turn, as Codex does. A failed connect consumes the turn it was for, so a run
//! against a dead server still ends. With `reconnect_every` it also closes the connection after
//! that many turns (connect storms); in idle mode ([`hold`]) it only opens and holds it.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime;

use super::config::{LoadConfig, Stop, Wire};
use super::event::{Event, Terminal};
use super::frame::{self, FrameSpec};
use super::pace::Pacer;
use super::stats::{record, Stats};
use super::transport::Transport;

/// Pause after a failed connect before the next attempt.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// What the sessions of one executor thread share.
pub struct ThreadState {
    /// The run's configuration.
    pub config: Arc<LoadConfig>,
    /// This thread's measurements.
    pub stats: RefCell<Stats>,
    /// This thread's share of the rate cap.
    pub pacer: Option<Pacer>,
    /// When duration-bounded sessions stop starting turns.
    pub deadline: Option<Instant>,
    /// Idle mode: connection attempts so far, over every thread.
    pub idle_attempts: Arc<AtomicUsize>,
}

/// What one exchange (a turn or a warm-up) measured.
struct Exchange {
    response_id: Option<String>,
    ttft: Option<Duration>,
    elapsed: Duration,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Sends `frames` and reads events up to the terminal one. `Err` carries the error key.
async fn exchange<T: Transport>(
    conn: &mut T,
    frames: Vec<String>,
    state: &ThreadState,
) -> Result<Exchange, String> {
    let start = Instant::now();
    let run = async {
        for frame in frames {
            conn.send(frame).await.map_err(|e| e.key())?;
        }
        let mut ttft = None;
        loop {
            let text = conn.recv().await.map_err(|e| e.key())?;
            let received_us = crate::runtime::unix_micros();
            let event = Event::parse(&text);
            let mut stats = state.stats.borrow_mut();
            stats.events += 1;
            let Some(event) = event else {
                return Err("bad_event".to_string());
            };
            if let Some(sent_us) = event.mock_ts_us {
                record(
                    &mut stats.event_latency_us,
                    received_us.saturating_sub(sent_us),
                );
            }
            if ttft.is_none() && event.is_delta() {
                ttft = Some(start.elapsed());
            }
            match event.terminal() {
                None => continue,
                Some(Terminal::Completed(response_id)) => {
                    return Ok(Exchange {
                        response_id,
                        ttft,
                        elapsed: start.elapsed(),
                    })
                }
                Some(Terminal::Failed(key)) => return Err(key),
            }
        }
    };
    runtime::timeout(state.config.turn_timeout, run)
        .await
        .unwrap_or_else(|| Err("turn_timeout".to_string()))
}

fn build(spec: &FrameSpec<'_>) -> Result<Vec<String>, String> {
    let built = if spec.realtime {
        frame::realtime_turn(spec.text, spec.pad_to)
    } else {
        frame::build(spec).map(|f| vec![f])
    };
    built.map_err(|_| "frame_build".to_string())
}

/// One turn: the optional warm-up, then the turn itself. Returns the id to chain from.
async fn turn<T: Transport>(
    conn: &mut T,
    state: &ThreadState,
    text: &str,
    previous: Option<&str>,
) -> Result<Option<String>, String> {
    let config = &state.config;
    let warm_id: Option<String>;
    let mut spec = FrameSpec {
        model: &config.model,
        text,
        previous,
        warmup: false,
        pad_to: config.payload_bytes,
        http: config.target.wire == Wire::Sse,
        realtime: config.target.wire == Wire::Realtime,
    };
    if config.warmup {
        let warm = exchange(
            conn,
            build(&FrameSpec {
                warmup: true,
                ..spec
            })?,
            state,
        )
        .await?;
        let mut stats = state.stats.borrow_mut();
        stats.warmups_ok += 1;
        record(&mut stats.warmup_us, micros(warm.elapsed));
        warm_id = warm.response_id;
        spec.previous = warm_id.as_deref();
    }
    let done = exchange(conn, build(&spec)?, state).await?;
    let mut stats = state.stats.borrow_mut();
    stats.turns_ok += 1;
    record(&mut stats.turn_us, micros(done.elapsed));
    if let Some(ttft) = done.ttft {
        record(&mut stats.ttft_us, micros(ttft));
    }
    Ok(done.response_id)
}

/// Runs session `id` until its stop condition.
pub async fn run<T: Transport>(id: usize, state: &ThreadState) {
    let config = &state.config;
    let mut conn: Option<T> = None;
    let mut previous: Option<String> = None;
    let mut n: u64 = 0;
    let mut on_conn: u64 = 0;
    let mut opened_at: Option<Instant> = None;
    loop {
        let past_deadline = || state.deadline.is_some_and(|d| Instant::now() >= d);
        match config.stop {
            Stop::Turns(turns) if n >= turns => break,
            Stop::Duration(_) if past_deadline() => break,
            _ => {}
        }
        if let Some(pacer) = &state.pacer {
            let now = Instant::now();
            let slot = pacer.reserve(now);
            if slot > now {
                runtime::sleep(slot - now).await;
            }
            if past_deadline() {
                break;
            }
        }
        n += 1;
        let connect_started = Instant::now();
        let mut open = match conn.take() {
            Some(c) => c,
            None => match T::open(config).await {
                Ok(c) => {
                    let mut stats = state.stats.borrow_mut();
                    stats.connects += 1;
                    record(&mut stats.connect_us, micros(connect_started.elapsed()));
                    on_conn = 0;
                    opened_at = Some(connect_started);
                    c
                }
                Err(e) => {
                    {
                        let mut stats = state.stats.borrow_mut();
                        stats.turns_failed += 1;
                        stats.error(e.key());
                    }
                    previous = None;
                    runtime::sleep(CONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        let text = format!("load turn {n} on connection {id}");
        let chain_from = if config.chain {
            previous.as_deref()
        } else {
            None
        };
        match turn(&mut open, state, &text, chain_from).await {
            Ok(response_id) => {
                previous = response_id;
                on_conn += 1;
                if let Some(opened) = opened_at.take() {
                    let mut stats = state.stats.borrow_mut();
                    record(&mut stats.first_turn_us, micros(opened.elapsed()));
                }
                if config.reconnect_every.is_some_and(|every| on_conn >= every) {
                    previous = None;
                } else {
                    conn = Some(open);
                }
            }
            Err(key) => {
                let mut stats = state.stats.borrow_mut();
                stats.turns_failed += 1;
                stats.error(key);
                previous = None;
                opened_at = None;
            }
        }
    }
}

/// Idle mode: opens the connection, runs `idle_turns` turns on it, holds it for `hold` without
/// sending anything, closes it. The attempt that completes the set prints `idle sessions open:
/// N` on stdout, so a script can read the server's memory while every connection is held.
pub async fn hold<T: Transport>(id: usize, state: &ThreadState, hold: Duration) {
    let config = &state.config;
    let started = Instant::now();
    let conn = match T::open(config).await {
        Ok(mut c) => {
            for n in 0..config.idle_turns {
                let text = format!("idle turn {n} on connection {id}");
                if let Err(key) = turn(&mut c, state, &text, None).await {
                    let mut stats = state.stats.borrow_mut();
                    stats.turns_failed += 1;
                    stats.error(key);
                }
            }
            let mut stats = state.stats.borrow_mut();
            stats.connects += 1;
            stats.idle_open += 1;
            record(&mut stats.connect_us, micros(started.elapsed()));
            Some(c)
        }
        Err(e) => {
            state.stats.borrow_mut().error(e.key());
            None
        }
    };
    if state.idle_attempts.fetch_add(1, Ordering::AcqRel) + 1 == config.connections {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "idle sessions open: {}", config.connections);
        let _ = out.flush();
    }
    if conn.is_some() {
        runtime::sleep(hold).await;
    }
    drop(conn);
}
