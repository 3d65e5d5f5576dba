//! Reading the gateway's measurements from outside: the stats socket (`shardgate stats`), the
//! admin HTTP listener (`GET /metrics`), and the CLI client of the socket.
//!
//! Both servers are plain std threads next to the control thread, off the data plane. They read
//! the control thread's [`SharedAggregator`] under its mutex, so they answer even while the
//! control loop waits on a slow usage sink.

pub mod admin;
pub mod client;
mod conns;
pub mod socket;

use std::io;
use std::path::PathBuf;

use crate::config::ServerConfig;
use crate::metrics::aggregate::SharedAggregator;

/// Why a stats endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Another live process answers on the socket path.
    #[error("stats socket {0} is in use by a running gateway")]
    InUse(PathBuf),
    /// The path exists and is not a socket (never removed: it is not ours).
    #[error("stats socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket could not be created.
    #[error("stats socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The admin listener could not be bound.
    #[error("admin listener {addr}: {source}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// The failure.
        source: io::Error,
    },
    /// A server thread could not be spawned.
    #[error("cannot start a stats thread: {0}")]
    Thread(io::Error),
}

/// The running stats endpoints (each optional, as configured).
pub struct StatsServices {
    socket: Option<socket::StatsSocket>,
    admin: Option<admin::AdminServer>,
}

impl StatsServices {
    /// Starts the stats socket and the admin listener when `[server]` asks for them.
    pub fn start(server: &ServerConfig, agg: &SharedAggregator) -> Result<Self, StatsError> {
        let socket = match &server.stats_socket {
            Some(path) => Some(socket::StatsSocket::start(path, agg.clone())?),
            None => None,
        };
        let admin = match server.admin_listen {
            Some(addr) => Some(admin::AdminServer::start(addr, agg.clone())?),
            None => None,
        };
        Ok(StatsServices { socket, admin })
    }

    /// The admin listener's bound address (the real port when configured with port 0).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(admin::AdminServer::addr)
    }

    /// Stops both servers and removes the socket file.
    pub fn stop(&mut self) {
        if let Some(s) = self.socket.take() {
            s.stop();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
    }
}

impl Drop for StatsServices {
    fn drop(&mut self) {
        self.stop();
    }
}
