//! A client that stops reading must not hold a turn (and its upstream connection) forever. Every
//! write a turn makes to its client goes through [`WriteDeadline`]: a write that completes at once
//! costs nothing extra (no timer is armed); one that waits longer than
//! `[server] client_write_timeout_secs` means the client is gone, and the turn ends the way it
//! ends for a client that disconnected (relay stopped, upstream connection discarded).

use std::future::Future;
use std::time::Duration;

use async_tungstenite::tungstenite::Utf8Bytes;

use crate::runtime;

use super::counters::{bump, ShardCounters};
use super::sink::{ClientSignal, ClientSink, Gone, TurnError};

/// Wraps a client sink so that each write has a deadline.
pub struct WriteDeadline<'a, S> {
    inner: S,
    limit: Duration,
    counters: &'a ShardCounters,
}

impl<'a, S: ClientSink> WriteDeadline<'a, S> {
    /// Writes to `inner` wait at most `limit`; timeouts are counted in `client_write_timeouts`.
    pub fn new(inner: S, limit: Duration, counters: &'a ShardCounters) -> Self {
        WriteDeadline {
            inner,
            limit,
            counters,
        }
    }

    /// The wrapped sink (for what it collected).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Runs `write`, giving up (`None`) after `limit` once it has to wait: a write that completes
/// at its first poll arms no timer (and allocates nothing for one).
pub(crate) async fn deadline<F: Future>(limit: Duration, write: F) -> Option<F::Output> {
    let mut write = std::pin::pin!(write);
    if let Some(done) = futures_lite::future::poll_once(&mut write).await {
        return Some(done);
    }
    runtime::timeout(limit, write).await
}

/// Runs a client write under [`deadline`]; a timeout counts and logs the client as gone.
pub(crate) async fn within(
    limit: Duration,
    counters: &ShardCounters,
    write: impl Future<Output = Result<(), Gone>>,
) -> Result<(), Gone> {
    match deadline(limit, write).await {
        Some(done) => done,
        None => {
            bump(&counters.client_write_timeouts);
            crate::error_limited!(
                timeout_secs = limit.as_secs_f64(),
                "client stopped reading: write timed out, ending its turn"
            );
            Err(Gone)
        }
    }
}

impl<S: ClientSink> ClientSink for WriteDeadline<'_, S> {
    async fn feed(&mut self, event: Utf8Bytes, event_type: &str) -> Result<(), Gone> {
        within(
            self.limit,
            self.counters,
            self.inner.feed(event, event_type),
        )
        .await
    }

    async fn feed_view(&mut self, event: &str, event_type: &str) -> Result<(), Gone> {
        within(
            self.limit,
            self.counters,
            self.inner.feed_view(event, event_type),
        )
        .await
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        if self.inner.flushed() {
            return Ok(());
        }
        within(self.limit, self.counters, self.inner.flush()).await
    }

    fn flushed(&self) -> bool {
        self.inner.flushed()
    }

    async fn signal(&mut self) -> ClientSignal {
        self.inner.signal().await
    }

    async fn fail(&mut self, error: &TurnError) -> Result<(), Gone> {
        within(self.limit, self.counters, self.inner.fail(error)).await
    }

    fn takes_views(&self) -> bool {
        self.inner.takes_views()
    }

    fn takes_frames(&self) -> bool {
        self.inner.takes_frames()
    }

    async fn write_frames(&mut self, frames: &[u8], payload_bytes: u64) -> Result<(), Gone> {
        within(
            self.limit,
            self.counters,
            self.inner.write_frames(frames, payload_bytes),
        )
        .await
    }
}
