//! A fresh self-signed certificate for `localhost` and `127.0.0.1`, and the TLS acceptor using it.

use std::sync::Arc;

use futures_rustls::rustls::crypto::ring;
use futures_rustls::rustls::ServerConfig;
use futures_rustls::TlsAcceptor;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why the certificate or the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("generating the self-signed certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("configuring TLS: {0}")]
    Config(#[from] futures_rustls::rustls::Error),
}

/// The self-signed certificate (PEM, for clients to trust) and an acceptor serving it.
pub struct SelfSigned {
    /// The certificate in PEM.
    pub pem: String,
    /// Accepts TLS connections with it.
    pub acceptor: TlsAcceptor,
}

/// Generates a certificate and builds an acceptor (ring provider, TLS 1.2 and 1.3, ALPN http/1.1).
pub fn self_signed() -> Result<SelfSigned, TlsError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(SelfSigned {
        pem: certified.cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}
