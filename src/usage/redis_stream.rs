//! The Redis stream sink: `XADD` to `[usage] stream`, exactly once per response id.
//!
//! One Lua script call takes a whole batch. For each record it first claims
//! `<stream>:seen:<response id>` with `SET NX EX` and appends the record only when the claim is
//! new, atomically, so a replayed batch (after a timeout whose reply was lost, or from the
//! spool) never duplicates an entry. The claim keys are built inside the script, so this targets
//! a single Redis (not a cluster). Every call has a deadline (`[state] redis_timeout_ms`), so a
//! hung Redis stalls the control thread for at most that long per attempt.

use std::ops::Range;
use std::time::Duration;

use super::sink::{Batch, Sink, SinkError};
use crate::config::Secret;

/// How long an id stays claimed: replays older than this could duplicate.
pub const SEEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// Records per script call.
const CALL_BATCH: usize = 256;

const SCRIPT: &str = r#"
local added = 0
for i = 3, #ARGV, 2 do
  if redis.call('SET', ARGV[2] .. ARGV[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'response_id', ARGV[i], 'record', ARGV[i + 1])
    added = added + 1
  end
end
return added
"#;

/// The Redis stream sink. Connects lazily and reconnects after any failure.
pub struct RedisStreamSink {
    client: redis::Client,
    conn: Option<(redis::Connection, String)>,
    stream: String,
    seen_prefix: String,
    timeout: Duration,
    /// Records the script skipped as already written (replays).
    pub duplicates: u64,
}

impl RedisStreamSink {
    /// A sink for `stream` at `url`; does not connect yet.
    pub fn new(url: &Secret, stream: &str, timeout: Duration) -> Result<Self, SinkError> {
        // The URL may carry a password: the error names only the kind of failure.
        let client = redis::Client::open(url.expose())
            .map_err(|e| SinkError::Redis(format!("invalid redis url ({:?})", e.kind())))?;
        Ok(RedisStreamSink {
            client,
            conn: None,
            stream: stream.to_string(),
            seen_prefix: format!("{stream}:seen:"),
            timeout,
            duplicates: 0,
        })
    }

    /// The open connection and the script's SHA, connecting (and loading the script) if needed.
    fn connection(&mut self) -> Result<&mut (redis::Connection, String), SinkError> {
        if self.conn.is_none() {
            let mut conn = self
                .client
                .get_connection_with_timeout(self.timeout)
                .map_err(redis_err)?;
            conn.set_read_timeout(Some(self.timeout))
                .map_err(redis_err)?;
            conn.set_write_timeout(Some(self.timeout))
                .map_err(redis_err)?;
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(SCRIPT)
                .query(&mut conn)
                .map_err(redis_err)?;
            self.conn = Some((conn, sha));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| SinkError::Redis("not connected".into()))
    }

    /// Sends records `range` of `batch` in one script call.
    fn write_chunk(&mut self, batch: &Batch, range: Range<usize>) -> Result<u64, SinkError> {
        let stream = self.stream.clone();
        let prefix = self.seen_prefix.clone();
        let (conn, sha) = self.connection()?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha.as_str())
            .arg(1)
            .arg(&stream)
            .arg(SEEN_TTL_SECS)
            .arg(&prefix);
        for i in range {
            let line = batch.get(i);
            cmd.arg(line.id).arg(line.json);
        }
        let added: u64 = cmd.query(conn).map_err(redis_err)?;
        Ok(added)
    }
}

impl Sink for RedisStreamSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        for start in (0..batch.len()).step_by(CALL_BATCH) {
            let range = start..(start + CALL_BATCH).min(batch.len());
            let sent = range.len() as u64;
            match self.write_chunk(batch, range) {
                Ok(added) => self.duplicates += sent - added.min(sent),
                Err(e) => {
                    // The connection's state is unknown: start over on the next attempt.
                    self.conn = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn redis_err(e: redis::RedisError) -> SinkError {
    SinkError::Redis(e.to_string())
}
