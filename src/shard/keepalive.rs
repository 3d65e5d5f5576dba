//! Keep-alive pings on idle upstream connections, so that upstream (and any middlebox on the
//! way) does not cut a connection for silence between turns.
//!
//! Two kinds of idle connection are pinged every `[upstream] ping_interval_secs`: those on a
//! pool's idle stack (one task per pool, [`arm`]) and those a session holds between turns (the
//! session's own task while it rests, [`keep_leased`], raced against the client's next bytes).
//! A ping is sent without waiting ([`send_now`]) and its pong is looked for `pong_timeout_ms`
//! later, again without waiting ([`settle_now`]): nothing reads an idle connection in between,
//! so a resting connection ([`UpstreamConn::rest`]) is built for the instant of each step and
//! rests again at once, and keep-alive costs no buffers between its steps.
//!
//! A ping never races a turn. A pooled connection is leased (and its awaited pong forgotten,
//! [`PingState::forget`]) only off the idle stack, which the sweep does not touch then; a
//! session's ping future is dropped before its next turn starts. A pong that arrives inside a
//! turn is skipped by the relay like any control frame. Each ping carries its generation as
//! payload, and only the pong with the awaited generation counts, so a pong left over from an
//! earlier exchange never vouches for a connection. A connection whose pong is late, or that
//! said anything else while idle, is closed, never reused. Upstream's own pings on an idle
//! connection are answered at the next step (tungstenite queues the pong as it reads the
//! ping; the step flushes it).

use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;

use async_tungstenite::tungstenite::{Bytes, Message};
use futures_util::{FutureExt, SinkExt, StreamExt};

use crate::runtime;

use super::counters::bump;
use super::pool::{Lease, Pool};
use super::upstream::UpstreamConn;

/// Labeled-counter family of keep-alive pings: `sent`, `late` (no pong in time), `failed`
/// (the connection broke, closed, or sent an event while idle).
pub const UPSTREAM_PINGS: &str = "upstream_pings";

/// A connection's keep-alive pings: the last generation sent and the one whose pong is awaited
/// (0: none). Small, as it is part of every connection a session holds inline.
#[derive(Debug, Default)]
pub struct PingState {
    sent: u32,
    awaiting: u32,
}

impl PingState {
    /// The connection is leased for a turn: the turn's relay skips the pong, whatever comes.
    pub fn forget(&mut self) {
        self.awaiting = 0;
    }

    /// The next generation to send (never 0).
    fn next(&mut self) -> u32 {
        self.sent = self.sent.wrapping_add(1).max(1);
        self.sent
    }
}

/// Why an idle connection failed its keep-alive exchange; it is to be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PingError {
    /// The pong did not come within the pong timeout.
    #[error("pong not received in time")]
    Late,
    /// The connection failed, or upstream closed it or sent a message on it while idle.
    #[error("idle upstream connection broke")]
    Failed,
}

impl PingError {
    /// The `upstream_pings` label it is counted under.
    pub fn label(&self) -> &'static str {
        match self {
            PingError::Late => "late",
            PingError::Failed => "failed",
        }
    }
}

/// Sends a ping on an idle connection without waiting, and rests it again if it rested.
pub fn send_now(conn: &mut UpstreamConn) -> Result<(), PingError> {
    let was_resting = conn.is_resting();
    let generation = conn.pings.next();
    let ws = conn.ws().now_or_never().ok_or(PingError::Failed)?;
    let ping = Message::Ping(Bytes::copy_from_slice(&generation.to_be_bytes()));
    // An idle socket takes 14 bytes at once; one that cannot belongs to a peer gone silent.
    match ws.send(ping).now_or_never() {
        Some(Ok(())) => {}
        Some(Err(_)) | None => return Err(PingError::Failed),
    }
    conn.pings.awaiting = generation;
    if was_resting && !conn.rest_built_now() {
        return Err(PingError::Failed);
    }
    Ok(())
}

/// Reads what an idle connection received, without waiting: `Ok` when the awaited pong is
/// among it (or no ping awaits one), answering upstream's pings on the way; then rests the
/// connection again if it rested.
pub fn settle_now(conn: &mut UpstreamConn) -> Result<(), PingError> {
    let expected = conn.pings.awaiting;
    if expected == 0 {
        return Ok(());
    }
    let was_resting = conn.is_resting();
    let ws = conn.ws().now_or_never().ok_or(PingError::Failed)?;
    let mut heard = false;
    while let Some(next) = ws.next().now_or_never() {
        match next {
            Some(Ok(Message::Pong(payload))) => {
                heard |= payload.as_ref() == expected.to_be_bytes();
            }
            // tungstenite queued the pong; the flush below sends it.
            Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Close(_)))
            | Some(Err(_))
            | None => return Err(PingError::Failed),
        }
    }
    if let Some(Err(_)) = ws.flush().now_or_never() {
        return Err(PingError::Failed);
    }
    if !heard {
        return Err(PingError::Late);
    }
    conn.pings.awaiting = 0;
    if was_resting && !conn.rest_built_now() {
        return Err(PingError::Failed);
    }
    Ok(())
}

/// Makes sure a task pings `pool`'s idle connections every ping interval while it has any
/// (at most one task per pool; none when keep-alive is off).
pub fn arm(pool: &Rc<Pool>) {
    let (interval, pong_timeout) = pool.ping_timing();
    if interval.is_zero() || pool.ping_armed.replace(true) {
        return;
    }
    let pool: Weak<Pool> = Rc::downgrade(pool);
    runtime::spawn_local(async move {
        loop {
            runtime::sleep(interval).await;
            let Some(strong) = pool.upgrade() else { return };
            if !ping_idle(&strong) {
                strong.ping_armed.set(false);
                return;
            }
            drop(strong);
            runtime::sleep(pong_timeout).await;
            let Some(strong) = pool.upgrade() else { return };
            strong.sweep_idle(|conn| settle(&strong, conn));
        }
    });
}

/// Pings every idle connection of `pool`; `false` when it has none (the task stops).
fn ping_idle(pool: &Pool) -> bool {
    let mut any = false;
    pool.sweep_idle(|conn| {
        any = true;
        let sent = send_now(conn);
        count(pool, &sent, true);
        sent.is_ok()
    });
    any
}

/// Settles one idle connection's exchange; `false` when it is to be closed.
fn settle(pool: &Pool, conn: &mut UpstreamConn) -> bool {
    let settled = settle_now(conn);
    count(pool, &settled, false);
    settled.is_ok()
}

/// Counts a step's outcome: a ping sent, or a failure by its label.
fn count(pool: &Pool, outcome: &Result<(), PingError>, sending: bool) {
    let c = &pool.counters;
    match outcome {
        Ok(()) if sending => bump(&c.pings_sent),
        Ok(()) => {}
        Err(PingError::Late) => bump(&c.pings_late),
        Err(PingError::Failed) => bump(&c.pings_failed),
    }
}

/// A session's keep-alive of the connection it holds between turns ([`keep_leased`]), boxed.
pub type Keeping<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs a session's keep-alive, if any; without one, waits forever.
pub async fn or_forever<F: Future>(keeping: Option<F>) -> F::Output {
    match keeping {
        Some(keeping) => keeping.await,
        None => std::future::pending().await,
    }
}

/// Pings the connection a session holds between turns every `interval`, looking for each pong
/// `pong_timeout` later. Never returns while the connection answers; one that does not is
/// closed (the next turn dials) and the future then waits forever. Meant to be raced against
/// the client's next frame and dropped when it comes: nothing is awaited between the two
/// steps of an exchange but timers, so dropping it never leaves a frame half written, and a
/// pong still awaited is skipped by the next turn's relay.
pub async fn keep_leased<T>(
    lease: &mut Option<Lease>,
    interval: Duration,
    pong_timeout: Duration,
) -> T {
    if !interval.is_zero() {
        while let Some(held) = lease.as_mut() {
            runtime::sleep(interval).await;
            let pool = held.pool().clone();
            let mut outcome = send_now(held.conn());
            count(&pool, &outcome, true);
            if outcome.is_ok() {
                runtime::sleep(pong_timeout).await;
                outcome = settle_now(held.conn());
                count(&pool, &outcome, false);
            }
            if outcome.is_err() {
                if let Some(broken) = lease.take() {
                    broken.discard();
                }
            }
        }
    }
    std::future::pending().await
}
