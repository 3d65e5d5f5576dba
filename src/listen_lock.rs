//! One gateway per listen address.
//!
//! Every shard binds the listen address with `SO_REUSEPORT`, so the kernel would also let a second
//! gateway (same user) bind it and would quietly send it a share of the connections. Before
//! binding, a gateway claims the address: it binds an abstract Unix socket named after it. The
//! abstract namespace belongs to the network namespace, like TCP ports; a name is taken atomically
//! (no check-then-bind race) and is released by the kernel when the process exits, however it
//! exits, so a gateway restarting after a crash finds it free. Nothing is written to disk.

use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

/// Why the address could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ListenLockError {
    /// Another process (a running gateway) holds the claim.
    #[error("another shardgate process already serves {0}; stop it first or choose another [server] listen address")]
    Held(SocketAddr),
    /// The claim could not be made for another reason.
    #[error("cannot claim {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: io::Error,
    },
}

/// The claim on one listen address, held until dropped (for the life of the gateway).
#[derive(Debug)]
pub struct ListenLock {
    _socket: UnixDatagram,
}

impl ListenLock {
    /// Claims `addr` (a concrete address: port 0 is resolved by binding first).
    pub fn claim(addr: SocketAddr) -> Result<ListenLock, ListenLockError> {
        let name = format!("shardgate/listen/{addr}");
        let unix = UnixAddr::from_abstract_name(name.as_bytes())
            .map_err(|source| ListenLockError::Io { addr, source })?;
        match UnixDatagram::bind_addr(&unix) {
            Ok(socket) => Ok(ListenLock { _socket: socket }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ListenLockError::Held(addr)),
            Err(source) => Err(ListenLockError::Io { addr, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_claimed_once_until_released() {
        // The claim is only a name (no TCP socket); the port keeps concurrent test runs apart.
        let port = (std::process::id() % 60_000 + 1) as u16;
        let addr = SocketAddr::from(([127, 77, 0, 1], port));
        let first = ListenLock::claim(addr).unwrap();
        assert!(matches!(
            ListenLock::claim(addr),
            Err(ListenLockError::Held(a)) if a == addr
        ));
        let other = SocketAddr::from(([127, 77, 0, 2], port));
        assert!(ListenLock::claim(other).is_ok());
        drop(first);
        assert!(ListenLock::claim(addr).is_ok());
    }
}
