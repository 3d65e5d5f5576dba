//! An upstream account as one shard sees it: endpoint, credentials, TLS setup and resolved
//! address. Built once per shard at start; nothing here is shared across threads.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use futures_rustls::rustls::ClientConfig;
use http::HeaderValue;
use rustls_pki_types::ServerName;

use crate::config::Account;
use crate::net::proxy::ProxyUrl;
use crate::net::tls::{self, TlsSetupError};
use crate::runtime;

/// One account, ready to dial.
pub struct AccountRuntime {
    /// Index in the config's account list (stable id for counters).
    pub index: usize,
    /// The account as configured.
    pub config: Account,
    /// `Authorization` value for upstream, marked sensitive so it never prints.
    pub authorization: HeaderValue,
    /// WebSocket URL of the Responses endpoint.
    pub ws_url: String,
    /// TLS client config and name to verify, for https/wss endpoints.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Last address the host resolved to; cleared when a dial fails.
    resolved: Cell<Option<SocketAddr>>,
    /// Last address the egress proxy's host resolved to; cleared when a dial to it fails.
    proxy_resolved: Cell<Option<SocketAddr>>,
}

/// Why an account could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AccountSetupError {
    /// TLS configuration failed.
    #[error("account {account}: {source}")]
    Tls {
        /// The account id.
        account: String,
        /// The TLS failure.
        source: TlsSetupError,
    },
    /// The API key cannot be sent as a header value.
    #[error("account {0}: api key contains characters not allowed in a header")]
    BadKey(String),
}

impl AccountRuntime {
    /// Prepares an account for dialing.
    pub fn new(index: usize, config: Account) -> Result<Self, AccountSetupError> {
        let tls = if config.endpoint.tls {
            let cfg = tls::client_config(config.ca_file.as_deref()).map_err(|source| {
                AccountSetupError::Tls {
                    account: config.id.clone(),
                    source,
                }
            })?;
            let name = tls::server_name(&config.endpoint.host).map_err(|source| {
                AccountSetupError::Tls {
                    account: config.id.clone(),
                    source,
                }
            })?;
            Some((cfg, name))
        } else {
            None
        };
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose()))
                .map_err(|_| AccountSetupError::BadKey(config.id.clone()))?;
        authorization.set_sensitive(true);
        Ok(AccountRuntime {
            index,
            ws_url: config.endpoint.responses_ws_url(),
            authorization,
            tls,
            resolved: Cell::new(None),
            proxy_resolved: Cell::new(None),
            config,
        })
    }

    /// `true` when the account's auth kind is known to support WebSocket mode (an unknown kind
    /// goes over HTTP/SSE). Whether it is configured for WebSocket is a live switch
    /// ([`crate::reload::LiveSettings`]).
    pub fn supports_ws(&self) -> bool {
        self.config.auth_supports_ws()
    }

    /// The upstream's address: an IP literal directly, a host name resolved off the shard and
    /// cached.
    pub async fn address(&self) -> std::io::Result<SocketAddr> {
        let ep = &self.config.endpoint;
        resolve(&self.resolved, &ep.host, ep.port).await
    }

    /// The address of `proxy` (the account's egress proxy), cached like
    /// [`AccountRuntime::address`].
    pub async fn proxy_address(&self, proxy: &ProxyUrl) -> std::io::Result<SocketAddr> {
        resolve(&self.proxy_resolved, &proxy.host, proxy.port).await
    }

    /// Forgets the cached addresses, so the next dial resolves again.
    pub fn forget_address(&self) {
        self.resolved.set(None);
        self.proxy_resolved.set(None);
    }
}

/// `host:port` from `cache`, else resolved (an IP literal directly, a name off the shard) and
/// cached.
async fn resolve(
    cache: &Cell<Option<SocketAddr>>,
    host: &str,
    port: u16,
) -> std::io::Result<SocketAddr> {
    if let Some(addr) = cache.get() {
        return Ok(addr);
    }
    let addr = if let Ok(ip) = host.parse::<IpAddr>() {
        SocketAddr::new(ip, port)
    } else {
        let target = (host.to_string(), port);
        runtime::blocking(move || {
            target.to_socket_addrs()?.next().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address")
            })
        })
        .await?
    };
    cache.set(Some(addr));
    Ok(addr)
}
