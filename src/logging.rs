//! Log setup and rate-limited error lines.
//!
//! A failing dependency (a Redis outage, a full disk) fails every record or request the same way;
//! logging each one would drown the log and cost more than the failure. A [`RateLimit`] per call
//! site lets one line through per interval and reports how many were suppressed in between.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Log targets capped whatever the configured level or `RUST_LOG` says ("never more verbose
/// than"), because at a finer level they print secrets: tungstenite traces the whole upgrade
/// request it sends upstream, `Authorization` included.
const SECRET_SAFE_CAPS: &[(&str, LevelFilter)] =
    &[("tungstenite::handshake::client", LevelFilter::DEBUG)];

/// Keeps the log writer thread running; dropping it flushes the lines still queued (hold it
/// until the process exits).
pub type LogGuard = Option<tracing_appender::non_blocking::WorkerGuard>;

/// The caps of [`SECRET_SAFE_CAPS`] as a filter that only ever removes lines: every other target
/// passes whatever its level, so the configured filter alone decides for them.
fn caps() -> Targets {
    SECRET_SAFE_CAPS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, (target, level)| t.with_target(*target, *level),
    )
}

/// Installs the global tracing subscriber: text or JSON lines on stderr, `RUST_LOG` overriding
/// the configured level, [`SECRET_SAFE_CAPS`] applied on top of both. Colours only when stderr is
/// a terminal (a file or a pipe gets plain text). Lines are written by a dedicated thread, so a
/// shard never blocks on stderr (a slow log pipe delays lines, not turns; past 128k queued lines
/// new ones are dropped rather than stalling the shards). Does nothing when a subscriber is
/// already installed (tests).
pub fn init(log: &LogConfig) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let most_verbose = filter.max_level_hint();
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let installed = if log.json {
        builder.json().finish().with(caps()).try_init()
    } else {
        builder.finish().with(caps()).try_init()
    };
    let guard = installed.ok().map(|()| guard)?;
    // `try_init` sets the `log` crate's level from the whole stack's hint, which the caps layer
    // (TRACE for every target it does not cap) makes TRACE: every `log` call of a dependency
    // (tungstenite logs each frame it reads and writes) then went through the tracing bridge
    // and the filter's directive match, only to be dropped. The configured filter decides
    // what passes, so its level is the `log` crate's level too.
    if let Some(level) = most_verbose {
        log::set_max_level(as_log(level));
    }
    Some(guard)
}

/// `level` as the `log` crate's level filter.
fn as_log(level: LevelFilter) -> log::LevelFilter {
    match level.into_level() {
        None => log::LevelFilter::Off,
        Some(tracing::Level::ERROR) => log::LevelFilter::Error,
        Some(tracing::Level::WARN) => log::LevelFilter::Warn,
        Some(tracing::Level::INFO) => log::LevelFilter::Info,
        Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
        Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
    }
}

/// The process-wide origin of [`RateLimit`] clocks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// At most one line per interval from one call site; `static`-constructible and lock-free.
pub struct RateLimit {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] + 1 of the last line let through (0 = never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A limiter letting one line through per `interval_ms` milliseconds.
    pub const fn per_ms(interval_ms: u64) -> Self {
        RateLimit {
            interval_ms,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines suppressed since the last
    /// one; `None` (and one more suppressed) otherwise.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed())
    }

    fn allow_at(&self, since_epoch: Duration) -> Option<u64> {
        let now = since_epoch.as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Logs an error line through a per-call-site [`RateLimit`] (one line per 10 s), adding a
/// `suppressed` field that counts the lines skipped since the last one.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::per_ms(10_000);
        if let Some(suppressed) = LIMIT.allow() {
            tracing::error!(suppressed, $($arg)+);
        }
    }};
}

/// As [`error_limited!`] at warn level: for refusals a hostile peer can trigger at will.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::per_ms(10_000);
        if let Some(suppressed) = LIMIT.allow() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_only_remove_lines() {
        use tracing::Level;
        let caps = caps();
        let target = "tungstenite::handshake::client";
        assert!(!caps.would_enable(target, &Level::TRACE));
        assert!(caps.would_enable(target, &Level::DEBUG));
        assert!(caps.would_enable("shardgate::shard", &Level::TRACE));
    }

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let l = RateLimit::per_ms(1_000);
        assert_eq!(l.allow_at(Duration::from_millis(0)), Some(0));
        assert_eq!(l.allow_at(Duration::from_millis(10)), None);
        assert_eq!(l.allow_at(Duration::from_millis(999)), None);
        assert_eq!(l.allow_at(Duration::from_millis(1_001)), Some(2));
        assert_eq!(l.allow_at(Duration::from_millis(1_500)), None);
        assert_eq!(l.allow_at(Duration::from_millis(2_100)), Some(1));
    }
}
