//! The admin HTTP listener: `GET /metrics` in the Prometheus text format, 404 elsewhere.
//!
//! Plain HTTP/1.1, one request per connection (`Connection: close`). Bind it to loopback or a
//! private interface: it has no authentication. A client has [`HEAD_TIMEOUT`] from accept for
//! its whole request head (not per read: a peer dribbling a byte at a time gets no longer), and
//! slow or idle peers past the connection cap are evicted (see `conns`), so a scrape gets in.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::conns::{ConnCtx, Server};
use super::StatsError;
use crate::metrics::aggregate::{lock, SharedAggregator};
use crate::metrics::prometheus;
use crate::protocol::http1::parse_request;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has, from accept, to send its whole request head; also the write timeout.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The running admin listener.
pub struct AdminServer {
    server: Server,
    addr: SocketAddr,
}

impl AdminServer {
    /// Binds `addr` and starts serving.
    pub fn start(addr: SocketAddr, agg: SharedAggregator) -> Result<Self, StatsError> {
        let err = |source| StatsError::Admin { addr, source };
        let listener = TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let bound = listener.local_addr().map_err(err)?;
        if !bound.ip().is_loopback() {
            tracing::warn!(
                addr = %bound,
                "admin listener is not on loopback; /metrics has no authentication"
            );
        }
        let server = Server::spawn(
            "stats-admin",
            listener,
            |l: &TcpListener| l.accept().map(|(s, _)| s),
            move |stream, ctx: &ConnCtx<'_>| serve(stream, &agg, ctx),
        )
        .map_err(StatsError::Thread)?;
        Ok(AdminServer {
            server,
            addr: bound,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting.
    pub fn stop(self) {
        self.server.stop();
    }
}

fn serve(mut stream: TcpStream, agg: &SharedAggregator, ctx: &ConnCtx<'_>) {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(HEAD_TIMEOUT)).is_err()
    {
        return;
    }
    let Some(head) = read_head(&mut stream, deadline) else {
        return;
    };
    let _busy = ctx.busy();
    let response = match parse_request(&head) {
        Ok(Some((req, _))) => match (&*req.method, req.path.as_str()) {
            ("GET", "/metrics") => {
                let doc = lock(agg).document(Instant::now());
                reply(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &prometheus::render(&doc),
                )
            }
            (_, "/metrics") => reply("405 Method Not Allowed", "text/plain", "GET only\n"),
            _ => reply("404 Not Found", "text/plain", "not found\n"),
        },
        _ => reply("400 Bad Request", "text/plain", "bad request\n"),
    };
    let _ = stream.write_all(response.as_bytes());
}

/// Reads up to the end of the request head by `deadline`; `None` past it, on EOF (an evicted
/// connection sees one) or for an oversized head.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    while len < MAX_HEAD {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}

fn reply(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
