//! Starting and stopping the gateway: one executor thread per shard, pinned to the CPUs of the
//! process affinity mask.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::control::{ControlHandle, ControlThread};
use crate::listen_lock::{ListenLock, ListenLockError};
use crate::oauth::refresher::Refresher;
use crate::process_memory;
use crate::reload::{self, LiveSettings, ReloadError, ReloadReport};
use crate::runtime;
use crate::shard::handoff::{self, CHANNEL_CAPACITY};
use crate::shard::{self, Shard};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: io::Error,
    },
    /// Another gateway already serves the listen address.
    #[error(transparent)]
    Claim(#[from] ListenLockError),
    /// The client listener's TLS certificate or key did not load.
    #[error(transparent)]
    ListenerTls(#[from] crate::net::tls_server::ListenerTlsError),
    /// A shard could not be prepared (TLS setup of an account).
    #[error("shard setup failed: {0}")]
    Setup(String),
    /// The control thread could not be started.
    #[error("control thread: {0}")]
    Control(#[from] crate::control::ControlError),
    /// A shard thread could not be started.
    #[error("cannot start shard thread: {0}")]
    Thread(io::Error),
    /// An OAuth account's state file could not be read, or the refresher could not start.
    #[error(transparent)]
    OAuth(#[from] crate::oauth::refresher::RefresherError),
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    stops: Vec<futures_channel::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    control: Option<ControlThread>,
    handle: ControlHandle,
    live: Arc<LiveSettings>,
    /// The config in effect: as started, with the live settings of the last reload.
    current: Mutex<Config>,
    /// This gateway's claim on its listen address, released when it is dropped.
    _claim: ListenLock,
    /// The OAuth token refresher, when an account needs one (stopped when dropped).
    _refresher: Option<Refresher>,
}

impl Gateway {
    /// Starts every shard and returns once all of them listen.
    pub fn start(config: Config) -> Result<Gateway, StartError> {
        for a in config.accounts.iter().filter(|a| !a.auth_supports_ws()) {
            tracing::warn!(
                account = %a.id,
                auth = %a.auth,
                "auth kind not known to support WebSocket mode: this account's requests go over HTTP/SSE"
            );
        }
        for a in &config.accounts {
            if let Some(proxy) = &a.proxy {
                // Display shows the proxy without its credentials.
                tracing::info!(account = %a.id, %proxy, "account goes through an egress proxy");
            }
        }
        if !config.server.transparent_huge_pages {
            match process_memory::disable_transparent_huge_pages() {
                Ok(()) => tracing::debug!("transparent huge pages off for this process"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not turn transparent huge pages off; the heap may use them"
                ),
            }
        }
        let live = Arc::new(LiveSettings::new(&config)?);
        let current = Mutex::new(config.clone());
        let config = Arc::new(config);
        let shards = config.server.shards;
        let cpus = runtime::allowed_cpus().unwrap_or_default();
        if config.server.pin_shards && shards > cpus.len() {
            tracing::warn!(
                shards,
                cpus = cpus.len(),
                "pin_shards is on but there are more shards than CPUs: the shards run unpinned"
            );
        }
        // Claimed before binding, so a second gateway never joins this one's SO_REUSEPORT group;
        // port 0 is claimed once resolved (a fresh port is nobody else's).
        let listen = config.server.listen;
        let early = (listen.port() != 0)
            .then(|| ListenLock::claim(listen))
            .transpose()?;
        // Bind the first listener here so port 0 resolves to one real port every shard shares.
        let first = runtime::BoundListener::bind(listen).map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let addr = first.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let claim = match early {
            Some(claim) => claim,
            None => ListenLock::claim(addr)?,
        };
        let mut listeners = vec![Some(first)];
        for _ in 1..shards {
            let l = runtime::BoundListener::bind(addr)
                .map_err(|source| StartError::Bind { addr, source })?;
            listeners.push(Some(l));
        }
        // The state files' tokens are in force before any shard dials.
        let refresher = Refresher::start(&config, &live.oauth)?;
        let (handle, control) = ControlThread::start(config.clone(), live.clone())?;
        // Check every shard can be built before starting any (a bad CA file fails here).
        Shard::new(0, config.clone(), live.clone(), handle.clone())
            .map_err(|e| StartError::Setup(e.to_string()))?;

        let mut stops = Vec::with_capacity(shards);
        let mut threads = Vec::with_capacity(shards);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ports = handoff::mesh(shards, CHANNEL_CAPACITY);
        for ((id, listener), port) in listeners.iter_mut().enumerate().zip(ports) {
            let listener = listener.take().expect("one listener per shard");
            let (stop_tx, stop_rx) = futures_channel::oneshot::channel();
            stops.push(stop_tx);
            let cfg = config.clone();
            let shard_live = live.clone();
            let to_control = handle.clone();
            let ready = ready_tx.clone();
            let cpu = (config.server.pin_shards && shards <= cpus.len()).then(|| cpus[id]);
            let handle = runtime::spawn_executor(&format!("shard-{id}"), cpu, move || async move {
                let listener = runtime::adopt_listener(listener);
                let shard = match Shard::new(id, cfg, shard_live, to_control) {
                    Ok(s) => Rc::new(s),
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                // Every shard connects its handoff ends; this completes once all of them did,
                // unless the gateway stops first (another shard failed to start).
                let mut stop_rx = stop_rx;
                let connect = std::pin::pin!(port.connect());
                let (handoff, inbox) =
                    match futures_util::future::select(connect, &mut stop_rx).await {
                        futures_util::future::Either::Left((ends, _)) => ends,
                        futures_util::future::Either::Right(_) => return,
                    };
                let _ = shard.handoff.set(handoff);
                shard::run(shard, listener, inbox, stop_rx).await;
            })
            .map_err(StartError::Thread)?;
            threads.push(handle);
        }
        drop(ready_tx);
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StartError::Setup(e)),
                Err(_) => return Err(StartError::Setup("a shard thread died at start".into())),
            }
        }
        Ok(Gateway {
            addr,
            stops,
            threads,
            control: Some(control),
            handle,
            live,
            current,
            _claim: claim,
            _refresher: refresher,
        })
    }

    /// Applies a reloaded config: the transport switches take effect for the next attempt and
    /// the client keys for the next request on every shard; other differences are reported as
    /// needing a restart. Refused whole when the account list changed.
    pub fn reload(&self, new: &Config) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        reload::apply(&mut current, new, &self.live)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The queue to the control thread (for tools and tests that read its counters).
    pub fn control(&self) -> &ControlHandle {
        &self.handle
    }

    /// The admin (`/metrics`) listener's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(ControlThread::admin_addr)
    }

    /// Stops accepting and waits for every shard thread to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Blocks until the shards stop (they stop only through [`Gateway::stop`] or a signal).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(c) = self.control.take() {
            c.stop();
        }
    }

    fn shutdown(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(c) = self.control.take() {
            c.stop();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}
