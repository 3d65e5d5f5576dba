//! TLS on the client listener: the server configuration built from the operator's PEM files,
//! shared by every shard and replaced whole by a reload. Each shard keeps its own acceptor and
//! notices a new certificate with one relaxed load per accepted connection, like the key table.

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_rustls::rustls::server::ServerSessionMemoryCache;
use futures_rustls::rustls::{self, ServerConfig};
use futures_rustls::TlsAcceptor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ListenerTls;

/// The only application protocol the listener speaks: WebSocket upgrades and `POST`s are HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// TLS sessions each shard remembers for resumption (rustls's default for one server).
const SESSION_CACHE_PER_SHARD: usize = 256;

/// Why the listener's TLS configuration could not be built; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ListenerTlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("cannot load server.tls_cert {path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("cannot load server.tls_key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (the key does not match the certificate, unsupported key type).
    #[error("server.tls_cert {cert} with server.tls_key {key}: {source}")]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// Reads `files` and builds the listener's TLS configuration (ALPN `http/1.1`).
pub fn server_config(files: &ListenerTls) -> Result<Arc<ServerConfig>, ListenerTlsError> {
    let name = |p: &Path| p.display().to_string();
    let cert_err = |reason: String| ListenerTlsError::Cert {
        path: name(&files.cert),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate found".into()));
    }
    // The key file's content never goes into an error: only what kind of failure it was.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| ListenerTlsError::Key {
        path: name(&files.key),
        reason: key_failure(&e),
    })?;
    let pair = |source| ListenerTlsError::Pair {
        cert: name(&files.cert),
        key: name(&files.key),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(pair)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// A PEM reading failure in words, without any of the file's bytes.
fn key_failure(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "no private key found".into(),
        Error::Io(io) => io.to_string(),
        _ => "not a readable PEM private key".into(),
    }
}

/// The listener's TLS configuration shared by all shards, replaced whole by a reload.
pub struct SharedListenerTls {
    generation: AtomicU64,
    config: Mutex<Arc<ServerConfig>>,
}

impl SharedListenerTls {
    /// Loads `files` (see [`server_config`]).
    pub fn load(files: &ListenerTls) -> Result<SharedListenerTls, ListenerTlsError> {
        Ok(SharedListenerTls {
            generation: AtomicU64::new(0),
            config: Mutex::new(server_config(files)?),
        })
    }

    /// Puts `config` in force for every connection accepted from now on; open ones keep theirs.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The configuration in force, as the calling shard's own copy: with its own session cache
    /// (rustls's default one is behind a mutex, which every shard's handshakes would share). A
    /// client resuming on another shard gets a full handshake.
    fn current(&self) -> (u64, Arc<ServerConfig>) {
        let generation = self.generation.load(Ordering::Acquire);
        let shared = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut own = (*shared).clone();
        own.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_PER_SHARD);
        (generation, Arc::new(own))
    }
}

/// A shard's acceptor: its own copy of the shared configuration, refreshed only after a reload.
pub struct ShardListenerTls {
    shared: Arc<SharedListenerTls>,
    local: RefCell<(u64, Arc<ServerConfig>)>,
}

impl ShardListenerTls {
    /// A view of `shared`.
    pub fn new(shared: Arc<SharedListenerTls>) -> ShardListenerTls {
        let local = RefCell::new(shared.current());
        ShardListenerTls { shared, local }
    }

    /// The acceptor in force for a connection accepted now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    fn config(&self) -> Arc<ServerConfig> {
        if self.shared.generation.load(Ordering::Relaxed) != self.local.borrow().0 {
            *self.local.borrow_mut() = self.shared.current();
        }
        self.local.borrow().1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> ListenerTls {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let files = ListenerTls {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_pair_loads_with_alpn_http11_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "one");
        let config = server_config(&files).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let missing = ListenerTls {
            cert: dir.path().join("nope.crt"),
            ..files.clone()
        };
        let err = server_config(&missing).unwrap_err().to_string();
        assert!(
            err.contains("server.tls_cert") && err.contains("nope.crt"),
            "{err}"
        );

        let not_a_key = ListenerTls {
            key: files.cert.clone(),
            ..files.clone()
        };
        let err = server_config(&not_a_key).unwrap_err().to_string();
        assert!(
            err.contains("server.tls_key") && err.contains("one.crt"),
            "{err}"
        );
        assert!(!err.contains("BEGIN"), "no file content in errors: {err}");

        let other = write_pair(dir.path(), "two");
        let mismatched = ListenerTls {
            key: other.key,
            ..files
        };
        let err = server_config(&mismatched).unwrap_err().to_string();
        assert!(err.contains("two.key"), "{err}");
    }

    #[test]
    fn a_shard_sees_a_replaced_config_at_its_next_accept() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(SharedListenerTls::load(&write_pair(dir.path(), "a")).unwrap());
        let shard = ShardListenerTls::new(shared.clone());
        let first = shard.config();
        assert!(
            Arc::ptr_eq(&first, &shard.config()),
            "no reload: same config"
        );
        let other = ShardListenerTls::new(shared.clone());
        assert!(
            !Arc::ptr_eq(&first.session_storage, &other.config().session_storage),
            "each shard has its own session cache"
        );
        let next = server_config(&write_pair(dir.path(), "b")).unwrap();
        shared.replace(next);
        let after = shard.config();
        assert!(!Arc::ptr_eq(&first, &after), "a reload is picked up");
        assert!(Arc::ptr_eq(&after, &shard.config()), "once");
    }
}
