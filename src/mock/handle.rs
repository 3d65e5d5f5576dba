//! Starting a mock (one executor thread per shard) and the handle that observes and stops it.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::config::MockConfig;
use super::conn;
use super::script::Script;
use super::state::Shared;
use super::stats::MockStats;
use super::tasks::Tasks;
use super::tls;
use crate::runtime;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A running mock; dropping it stops it.
pub struct MockHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts a mock on its own threads and returns once every shard is listening.
pub fn start(cfg: MockConfig) -> io::Result<MockHandle> {
    let (acceptor, ca_pem) = if cfg.tls_self_signed {
        let cert = tls::self_signed().map_err(io::Error::other)?;
        (Some(cert.acceptor), Some(cert.pem))
    } else {
        (None, None)
    };
    let shards = cfg.shards.max(1);
    let mut addr = cfg.listen;
    let mut handle = MockHandle {
        shared: Arc::new(Shared::new(cfg, acceptor)),
        addr,
        ca_pem,
        threads: Vec::with_capacity(shards),
    };
    for shard in 0..shards {
        let (ready_tx, ready_rx) = mpsc::channel();
        let shared = handle.shared.clone();
        let thread = runtime::spawn_executor(&format!("mock-{shard}"), None, move || {
            run_shard(shared, addr, ready_tx)
        })?;
        handle.threads.push(thread);
        match ready_rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("mock shard exited before listening")),
        }
    }
    handle.addr = addr;
    Ok(handle)
}

/// One shard: binds (reporting the address or the error), then accepts until stopped.
async fn run_shard(
    shared: Arc<Shared>,
    addr: SocketAddr,
    ready: mpsc::Sender<io::Result<SocketAddr>>,
) {
    let bound = runtime::BoundListener::bind(addr).and_then(|l| Ok((l.local_addr()?, l)));
    let listener = match bound {
        Ok((bound, listener)) => {
            let _ = ready.send(Ok(bound));
            runtime::adopt_listener(listener)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let tasks = Rc::new(Tasks::default());
    let accept_loop = async {
        loop {
            match runtime::accept(&listener).await {
                Ok(stream) => tasks.spawn(conn::serve_tcp(stream, shared.clone())),
                Err(e) => {
                    tracing::warn!(error = %e, "mock: accept failed");
                    runtime::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    };
    futures_lite::future::or(accept_loop, shared.stop.wait()).await;
    drop(listener);
    tasks.abort_all().await;
}

impl MockHandle {
    /// The address the mock listens on (the real port when started with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients are configured with: `http://IP:PORT/v1` or `https://localhost:PORT/v1`.
    pub fn base_url(&self) -> String {
        if self.ca_pem.is_some() {
            format!("https://localhost:{}/v1", self.addr.port())
        } else {
            let mut addr = self.addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}/v1")
        }
    }

    /// The self-signed certificate in PEM, when serving TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.snapshot()
    }

    /// Queues faults (appended to what is already queued).
    pub fn script(&self, script: Script) {
        self.shared.append_script(script);
    }

    /// Makes the OAuth token endpoint refuse the next `n` refreshes (`invalid_grant`).
    pub fn oauth_fail_refreshes(&self, n: u32) {
        self.shared.oauth(|o| o.fail_refreshes(n));
    }

    /// Revokes every OAuth access token issued so far: the next request with one gets a 401.
    pub fn oauth_revoke_access_tokens(&self) {
        self.shared.oauth(|o| o.revoke_access_tokens());
    }

    /// Clears counters, scripts and stored responses.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops every shard and joins its thread.
    pub fn stop(self) {
        drop(self);
    }

    fn shutdown(&mut self) {
        self.shared.stop.raise();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::warn!("mock: a shard thread panicked");
            }
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
