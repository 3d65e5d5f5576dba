//! The stats socket: a Unix socket (mode 0600) speaking a small line protocol.
//!
//! Each request is one line; each reply ends with a newline:
//! - `stats` → the [`StatsDoc`](crate::metrics::export::StatsDoc) as one JSON line.
//! - `hist NAME` → the histogram's window as an HdrHistogram V2 interval log (one interval per
//!   window slot); `hist NAME total` → one interval with the totals since start. The log's lines
//!   are followed by one empty line, which marks the end of the reply.
//! - `reset-window` → `ok`: the rolling window starts over.
//! - anything else → one line starting with `error:`.
//!
//! Idle connections past the cap are evicted, longest-waiting first (see `conns`), so
//! `shardgate stats` gets in however many idle peers hold the socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::conns::{ConnCtx, Server};
use super::StatsError;
use crate::metrics::aggregate::{lock, SharedAggregator};

/// Longest request line.
const MAX_LINE: u64 = 1024;
/// A connection with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// How often a waiting connection looks at the stop flag.
const READ_POLL: Duration = Duration::from_millis(500);

/// The running stats socket.
pub struct StatsSocket {
    server: Server,
    path: PathBuf,
    ino: u64,
}

impl StatsSocket {
    /// Creates the socket at `path` (mode 0600, removing a stale one) and starts serving it.
    pub fn start(path: &Path, agg: SharedAggregator) -> Result<Self, StatsError> {
        let sock_err = |source| StatsError::Socket {
            path: path.to_path_buf(),
            source,
        };
        clear_stale(path)?;
        let listener = bind_private(path).map_err(sock_err)?;
        listener.set_nonblocking(true).map_err(sock_err)?;
        let ino = std::fs::metadata(path).map_err(sock_err)?.ino();
        let server = Server::spawn(
            "stats-socket",
            listener,
            |l: &UnixListener| l.accept().map(|(s, _)| s),
            move |stream, ctx: &ConnCtx<'_>| serve(stream, &agg, ctx),
        )
        .map_err(StatsError::Thread)?;
        Ok(StatsSocket {
            server,
            path: path.to_path_buf(),
            ino,
        })
    }

    /// Stops serving and removes the socket file (if it is still the one this gateway made).
    pub fn stop(self) {
        self.server.stop();
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file left by a gateway that is gone; refuses a live socket or a non-socket.
fn clear_stale(path: &Path) -> Result<(), StatsError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StatsError::Socket {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(StatsError::NotASocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(StatsError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| StatsError::Socket {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds the socket inside a fresh 0700 directory next to `path`, makes it 0600, then renames
/// it into place: nobody else can reach it before its mode is final, and no process-wide
/// `umask` is touched (other threads may be creating files meanwhile).
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = parent.join(format!(".sg-stats-{}", std::process::id()));
    let staged = staging.join("s");
    if staging.exists() {
        let _ = std::fs::remove_file(&staged);
        std::fs::remove_dir(&staging)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    bound
}

fn serve(stream: UnixStream, agg: &SharedAggregator, ctx: &ConnCtx<'_>) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(READ_POLL)).is_err() {
        return;
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = io::BufWriter::new(write_half);
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(64);
    let mut last = Instant::now();
    loop {
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if !line.ends_with(b"\n") => {
                if line.len() as u64 >= MAX_LINE {
                    let _ = writer.write_all(b"error: request line too long\n");
                    let _ = writer.flush();
                    return;
                }
                // The peer closed after a last line without a newline: answer it.
                let _busy = ctx.busy();
                let reply = respond(agg, &String::from_utf8_lossy(&line));
                let _ = writer.write_all(reply.as_bytes());
                let _ = writer.flush();
                return;
            }
            Ok(_) => {
                let busy = ctx.busy();
                let reply = respond(agg, &String::from_utf8_lossy(&line));
                line.clear();
                last = Instant::now();
                if writer.write_all(reply.as_bytes()).is_err() || writer.flush().is_err() {
                    return;
                }
                drop(busy);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let too_long = line.len() as u64 >= MAX_LINE;
                if too_long || ctx.stopping() || last.elapsed() > IDLE {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// The reply to one request line.
pub fn respond(agg: &SharedAggregator, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["stats"] => {
            let doc = lock(agg).document(Instant::now());
            match sonic_rs::to_string(&doc) {
                Ok(mut json) => {
                    json.push('\n');
                    json
                }
                Err(e) => format!("error: cannot encode the stats document: {e}\n"),
            }
        }
        ["hist", name] | ["hist", name, "total"] => {
            let total = words.len() == 3;
            match lock(agg).hist_log(name, total, Instant::now()) {
                Ok(mut log) => {
                    log.push('\n');
                    log
                }
                Err(e) => format!("error: {e}\n"),
            }
        }
        ["reset-window"] => {
            lock(agg).reset_window(Instant::now());
            "ok\n".to_string()
        }
        [] => "error: empty request (try: stats, hist NAME [total], reset-window)\n".to_string(),
        _ => format!(
            "error: unknown request `{}` (try: stats, hist NAME [total], reset-window)\n",
            words.join(" ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::aggregate::Aggregator;
    use std::sync::{Arc, Mutex};

    #[test]
    fn each_request_gets_its_reply() {
        let agg: SharedAggregator = Arc::new(Mutex::new(Aggregator::new(
            2,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )));
        let stats = respond(&agg, "stats\n");
        assert!(stats.ends_with('\n') && stats.lines().count() == 1);
        let doc: crate::metrics::export::StatsDoc = sonic_rs::from_str(&stats).unwrap();
        assert_eq!(doc.shards, 2);
        let log = respond(&agg, "hist client_ttft total");
        assert!(log.starts_with('#') && log.ends_with("\n\n"), "{log:?}");
        assert!(respond(&agg, "hist nope").starts_with("error: unknown histogram"));
        assert_eq!(respond(&agg, " reset-window \r\n"), "ok\n");
        assert!(respond(&agg, "stats please").starts_with("error: unknown request"));
        assert!(respond(&agg, "").starts_with("error: empty request"));
    }
}
