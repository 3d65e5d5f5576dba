//! An upstream account as one shard sees it: endpoint, credentials, TLS setup and resolved
//! address. Built once per shard at start; nothing here is shared across threads.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use futures_rustls::rustls::ClientConfig;
use http::{HeaderName, HeaderValue};
use rustls_pki_types::ServerName;

use crate::config::Account;
use crate::net::proxy::ProxyUrl;
use crate::net::tls::{self, TlsSetupError};
use crate::oauth::token::{AccountToken, Credential, ShardToken};
use crate::runtime;

/// One account, ready to dial.
pub struct AccountRuntime {
    /// Index in the config's account list (stable id for counters).
    pub index: usize,
    /// The account as configured.
    pub config: Account,
    /// `Authorization` value for an API-key account, marked sensitive so it never prints.
    api_key_authorization: HeaderValue,
    /// An OAuth account's token in force (read at every dial and request).
    token: Option<ShardToken>,
    /// Headers an OAuth account adds to every upstream request (`chatgpt-account-id`, and
    /// `originator` when the client sent none).
    oauth_headers: Vec<(HeaderName, HeaderValue)>,
    /// The generation of the OAuth credential last sent from this shard.
    sent_generation: Cell<u64>,
    /// WebSocket URL of the Responses endpoint.
    pub ws_url: String,
    /// TLS client config and name to verify, for https/wss endpoints.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Last address the host resolved to; cleared when a dial fails.
    resolved: Cell<Option<SocketAddr>>,
    /// Last address the egress proxy's host resolved to; cleared when a dial to it fails.
    proxy_resolved: Cell<Option<SocketAddr>>,
}

/// The `originator` an OAuth account sends when the client sent none (what the Codex client
/// sends to the ChatGPT backend).
pub const DEFAULT_ORIGINATOR: &str = "codex-tui";

/// An account's secrets, borrowed or held for one attempt.
pub struct AccountSecrets<'a> {
    api_key: &'a str,
    token: Option<Arc<Credential>>,
}

impl AccountSecrets<'_> {
    /// Every secret, for `redact_secrets` (empty ones are ignored there).
    pub fn list(&self) -> [&str; 3] {
        match &self.token {
            Some(c) => [self.api_key, c.access.expose(), c.refresh.expose()],
            None => [self.api_key, "", ""],
        }
    }
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
        let oauth_headers = match &config.oauth {
            Some(o) => vec![
                (
                    HeaderName::from_static("chatgpt-account-id"),
                    HeaderValue::from_str(&o.chatgpt_account_id)
                        .map_err(|_| AccountSetupError::BadKey(config.id.clone()))?,
                ),
                (
                    HeaderName::from_static("originator"),
                    HeaderValue::from_static(DEFAULT_ORIGINATOR),
                ),
            ],
            None => Vec::new(),
        };
        Ok(AccountRuntime {
            index,
            ws_url: config.endpoint.responses_ws_url(),
            api_key_authorization: authorization,
            token: None,
            oauth_headers,
            sent_generation: Cell::new(0),
            tls,
            resolved: Cell::new(None),
            proxy_resolved: Cell::new(None),
            config,
        })
    }

    /// Reads the account's credential from `token` (an OAuth account's, kept current by the
    /// refresher) instead of its configured key.
    pub fn with_token(mut self, token: Option<Arc<AccountToken>>) -> Self {
        self.token = token.map(ShardToken::new);
        self
    }

    /// The `Authorization` value to send now (marked sensitive).
    pub fn authorization(&self) -> HeaderValue {
        match &self.token {
            Some(token) => {
                let (generation, credential) = token.credential();
                self.sent_generation.set(generation);
                credential.authorization.clone()
            }
            None => self.api_key_authorization.clone(),
        }
    }

    /// The generation of the OAuth credential this shard last sent (`None` for an API-key
    /// account): what a 401 reports to the refresher, which refreshes only when that is still
    /// the credential in force.
    pub fn credential_generation(&self) -> Option<u64> {
        self.token.as_ref().map(|_| self.sent_generation.get())
    }

    /// `false` while an OAuth account is out of rotation (its refresh failed).
    pub fn usable(&self) -> bool {
        self.token.as_ref().is_none_or(ShardToken::usable)
    }

    /// The secrets upstream text must be cleared of (`protocol::redact`).
    pub fn secrets(&self) -> AccountSecrets<'_> {
        AccountSecrets {
            api_key: self.config.api_key.expose(),
            token: self.token.as_ref().map(|t| t.credential().1),
        }
    }

    /// The headers the account adds to every upstream request, after the client's `forward`ed
    /// ones (a header the client forwarded is not added again).
    pub fn extra_headers<'a>(
        &'a self,
        forward: &'a [(HeaderName, HeaderValue)],
    ) -> impl Iterator<Item = &'a (HeaderName, HeaderValue)> + 'a {
        self.oauth_headers
            .iter()
            .filter(move |(name, _)| !forward.iter().any(|(n, _)| n == name))
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
