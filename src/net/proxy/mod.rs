//! Per-account egress proxies: the account's `proxy` URL and the handshake that turns a TCP
//! connection to the proxy into a tunnel to the upstream (HTTP CONNECT, [`connect`], or SOCKS5,
//! [`socks5`]). The tunnel is the connection's transport for its whole life: TLS, the WebSocket
//! upgrade or HTTP requests run through it exactly as over a direct TCP connection.
//!
//! Proxy credentials are secrets: they are kept as [`Secret`]s, never printed by `Debug` or
//! `Display`, and no error here carries them (or any byte of the URL that held them).

pub mod connect;
pub mod socks5;
mod url;

use std::fmt;
use std::net::SocketAddr;

use futures_lite::{AsyncRead, AsyncWrite};

use crate::config::Secret;

pub use url::ProxyUrlError;

/// Which protocol the proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: an HTTP/1.1 `CONNECT` tunnel.
    Connect,
    /// `socks5://` (the gateway resolves the upstream host) or `socks5h://` (the proxy does).
    Socks5 {
        /// `true` for `socks5h://`: the host name is sent to the proxy as is.
        proxy_resolves: bool,
    },
}

/// User name and password from the URL's user info (percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    /// The user name.
    pub user: Secret,
    /// The password (empty when the URL gave none).
    pub password: Secret,
}

/// An account's `proxy`, parsed and validated at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// The protocol.
    pub kind: ProxyKind,
    /// Host name or address literal (no brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Credentials, when the URL has user info.
    pub auth: Option<ProxyAuth>,
}

/// Shows the proxy without its credentials (`socks5h://proxy.corp:1080`), for logs and
/// `check-config`.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Connect => "http",
            ProxyKind::Socks5 {
                proxy_resolves: false,
            } => "socks5",
            ProxyKind::Socks5 {
                proxy_resolves: true,
            } => "socks5h",
        };
        let auth = if self.auth.is_some() { "***@" } else { "" };
        if self.host.contains(':') {
            write!(f, "{scheme}://{auth}[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{auth}{}:{}", self.host, self.port)
        }
    }
}

/// Where the tunnel should lead.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A host name (or address literal) and port, for the proxy to resolve.
    Name(&'a str, u16),
    /// An address the gateway resolved.
    Addr(SocketAddr),
}

/// Why a proxy did not open the tunnel. No variant carries credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection to the proxy failed mid-handshake.
    #[error("proxy connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The proxy closed the connection before answering in full.
    #[error("proxy closed the connection during its handshake")]
    Closed,
    /// The proxy's answer is not what the protocol allows.
    #[error("malformed proxy answer: {0}")]
    Malformed(&'static str),
    /// The CONNECT proxy answered with a status other than 2xx (407: wrong or missing
    /// credentials).
    #[error("proxy refused CONNECT with HTTP {0}")]
    ConnectRefused(u16),
    /// The SOCKS5 proxy accepts none of the offered authentication methods.
    #[error("SOCKS5 proxy accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    /// The SOCKS5 proxy rejected the user name and password.
    #[error("SOCKS5 proxy rejected the credentials")]
    AuthRejected,
    /// The SOCKS5 proxy answered the CONNECT request with an error reply.
    #[error("SOCKS5 proxy refused the connection: {0}")]
    Socks5Reply(socks5::Reply),
    /// The target cannot be put in the proxy request (a host name over 255 bytes for SOCKS5,
    /// a user name or password over 255 bytes).
    #[error("proxy request cannot be encoded: {0}")]
    Unencodable(&'static str),
}

/// Runs the proxy's handshake on `stream` (a fresh TCP connection to the proxy) so that it then
/// carries bytes to and from `target`. Returns the bytes read past the proxy's answer, which
/// belong to the tunnel.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: &ProxyUrl,
    target: Target<'_>,
) -> Result<Vec<u8>, ProxyError> {
    match proxy.kind {
        ProxyKind::Connect => connect::handshake(stream, target, proxy.auth.as_ref()).await,
        ProxyKind::Socks5 { .. } => {
            socks5::handshake(stream, target, proxy.auth.as_ref()).await?;
            Ok(Vec::new())
        }
    }
}

impl ProxyUrl {
    /// Parses and validates a proxy URL: `http://`, `socks5://` or `socks5h://`, a host, a port,
    /// optional percent-encoded `user:password@`. The error never repeats the input.
    pub fn parse(text: &str) -> Result<ProxyUrl, ProxyUrlError> {
        url::parse(text)
    }
}

/// A scripted peer for handshake tests: reads return `input` a few bytes at a time, writes are
/// recorded.
#[cfg(test)]
pub(crate) mod scripted {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_lite::{AsyncRead, AsyncWrite};

    /// The peer's bytes, handed out at most `step` at a time; what was written to it.
    pub struct Scripted {
        pub input: Vec<u8>,
        pub at: usize,
        pub step: usize,
        pub written: Vec<u8>,
    }

    impl Scripted {
        pub fn new(input: &[u8], step: usize) -> Self {
            Scripted {
                input: input.to_vec(),
                at: 0,
                step,
                written: Vec::new(),
            }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = (this.input.len() - this.at).min(this.step).min(buf.len());
            buf[..n].copy_from_slice(&this.input[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scripted::Scripted;
    use super::*;

    /// Arbitrary proxy answers, whole or cut anywhere and read in any step size, end in a typed
    /// result: the handshakes never panic on a peer's bytes.
    #[test]
    fn arbitrary_answers_never_panic() {
        let auth = ProxyAuth {
            user: Secret::new("u".into()),
            password: Secret::new("p".into()),
        };
        let prefixes: [&[u8]; 4] = [
            b"",
            b"HTTP/1.1 200 OK\r\n",
            &[5, 2, 1, 0],
            &[5, 0, 5, 0, 0, 3],
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..4000 {
            let len = (next() % 64) as usize;
            let mut input = prefixes[i % prefixes.len()].to_vec();
            input.extend((0..len).map(|_| next() as u8));
            let step = 1 + (next() % 8) as usize;
            for kind in [
                ProxyKind::Connect,
                ProxyKind::Socks5 {
                    proxy_resolves: true,
                },
            ] {
                let proxy = ProxyUrl {
                    kind,
                    host: "p".into(),
                    port: 1,
                    auth: (i % 2 == 0).then(|| auth.clone()),
                };
                let mut peer = Scripted::new(&input, step);
                let _ = futures_lite::future::block_on(handshake(
                    &mut peer,
                    &proxy,
                    Target::Name("api.example", 443),
                ));
            }
        }
    }
}
