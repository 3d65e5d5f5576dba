//! A run: executor threads, the sessions spread over them, the merged report.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::errors::AdditionError;

use crate::runtime;

use super::config::{ConfigError, LoadConfig, Stop, Wire};
use super::pace::Pacer;
use super::report::Report;
use super::session::{self, ThreadState};
use super::sse::SseTransport;
use super::stats::Stats;
use super::transport::Transport;
use super::ws::WsTransport;

/// Why a run could not be carried out (failures of the server under test are not among them:
/// they are counted in the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An executor thread could not be started.
    #[error("cannot start a load thread: {0}")]
    Thread(std::io::Error),
    /// An executor thread panicked.
    #[error("load thread {0} panicked")]
    Panicked(usize),
    /// Histograms could not be merged.
    #[error("merging histograms failed: {0}")]
    Merge(#[from] AdditionError),
}

/// One session over transport `T`: turns, or in idle mode an open connection held.
async fn session<T: Transport>(id: usize, state: &ThreadState) {
    match state.config.idle_hold {
        Some(hold) => session::hold::<T>(id, state, hold).await,
        None => session::run::<T>(id, state).await,
    }
}

/// Runs `config` to its stop condition and returns what it measured.
///
/// Connections are spread round-robin over `config.threads` executor threads (not pinned to
/// CPUs, so the load shares cores with whatever it measures). Each thread gets the share of the
/// rate cap proportional to its connections.
pub fn run(config: LoadConfig) -> Result<Report, RunError> {
    config.validate()?;
    let config = Arc::new(config);
    let start = Instant::now();
    let deadline = match config.stop {
        Stop::Duration(d) => Some(start + d),
        Stop::Turns(_) => None,
    };
    let idle_attempts = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::with_capacity(config.threads);
    for t in 0..config.threads {
        let ids: Vec<usize> = (t..config.connections).step_by(config.threads).collect();
        let pacer_rate = config
            .rate
            .map(|r| r * ids.len() as f64 / config.connections as f64);
        let cfg = config.clone();
        let idle_attempts = idle_attempts.clone();
        let handle = runtime::spawn_executor(&format!("load-{t}"), None, move || async move {
            let state = Rc::new(ThreadState {
                config: cfg,
                stats: RefCell::new(Stats::default()),
                pacer: pacer_rate.map(Pacer::new),
                deadline,
                idle_attempts,
            });
            let tasks: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let state = state.clone();
                    runtime::spawn_local_handle(async move {
                        match state.config.target.wire {
                            Wire::WebSocket | Wire::Realtime => {
                                session::<WsTransport>(id, &state).await
                            }
                            Wire::Sse => session::<SseTransport>(id, &state).await,
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            state.stats.take()
        })
        .map_err(RunError::Thread)?;
        threads.push(handle);
    }
    let mut total = Stats::default();
    for (t, handle) in threads.into_iter().enumerate() {
        let stats = handle.join().map_err(|_| RunError::Panicked(t))?;
        total.merge(&stats)?;
    }
    Ok(Report::new(&config, &total, start.elapsed()))
}
