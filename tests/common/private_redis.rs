//! A redis-server of a test's own, which the test kills and restarts on the same port.
//!
//! The port is chosen below the kernel's ephemeral range. A port from that range (what binding
//! port 0 hands out) can be taken while the server is down: by any outgoing connection's local
//! port, or by the gateway's own reconnect attempts connecting to themselves (TCP self-connect).
//! Then the restarted server cannot bind and the test fails for a reason that is not its own.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::poll_until;

/// Ports tried before the range's start: below it, ports are handed out only by explicit binds.
const LOWEST_PORT: u16 = 10_000;

/// How long a (re)started server has to answer PING; a restarted one with an append-only file
/// answers LOADING until it has read it back.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running redis-server on 127.0.0.1, killed when dropped.
pub struct PrivateRedis {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server with no persistence beyond `extra` arguments (e.g. `--appendonly yes`).
    pub fn start(extra: &[&str]) -> PrivateRedis {
        let args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        for _ in 0..20 {
            let mut server = PrivateRedis {
                port: unephemeral_port(),
                args: args.clone(),
                child: None,
            };
            if server.spawn_and_wait() {
                return server;
            }
        }
        panic!("no private redis-server started on 20 ports");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (an outage, from the gateway's point of view).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs and starts it again on the same port and arguments.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        assert!(
            self.spawn_and_wait(),
            "private redis-server did not come back on port {port}"
        );
    }

    /// Spawns the server and waits until it answers PING: `false` if it exited first (its port
    /// was taken) or never answered.
    fn spawn_and_wait(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let url = self.url();
        let mut exited = false;
        let up = poll_until(START_TIMEOUT, || {
            exited = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
            exited || answers_ping(&url, Duration::from_secs(1))
        });
        if !up || exited {
            self.kill();
            return false;
        }
        true
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `true` if the Redis at `url` answers a PING within `timeout` (not LOADING, not refused).
pub fn answers_ping(url: &str, timeout: Duration) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut con) = client.get_connection_with_timeout(timeout) else {
        return false;
    };
    if con.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    redis::cmd("PING").query::<String>(&mut con).is_ok()
}

/// A port below the ephemeral range that can be bound now. Test binaries run one at a time, so
/// a start drawn from the process id and the clock, stepped per call, keeps tests of one binary
/// (threads) and of successive binaries apart.
fn unephemeral_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low = ephemeral_range_start().max(LOWEST_PORT + 1_000);
    let span = u32::from(low - LOWEST_PORT);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = std::process::id().wrapping_mul(7_919).wrapping_add(nanos);
    loop {
        let step = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = LOWEST_PORT + ((seed.wrapping_add(step.wrapping_mul(97))) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`), 32768 if unreadable.
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
