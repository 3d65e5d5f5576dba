//! HTTP CONNECT tunnels: `CONNECT host:port HTTP/1.1` with `Proxy-Authorization: Basic` when the
//! URL has credentials; a 2xx answer opens the tunnel, anything else is a typed refusal.

use base64::Engine;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::http1;

use super::{ProxyAuth, ProxyError, Target};

/// Largest answer head accepted from a proxy.
const MAX_HEAD: usize = 16 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 1024;

/// The CONNECT request for `target`.
pub fn request(target: Target<'_>, auth: Option<&ProxyAuth>) -> Vec<u8> {
    let authority = match target {
        Target::Name(host, port) if host.contains(':') => format!("[{host}]:{port}"),
        Target::Name(host, port) => format!("{host}:{port}"),
        Target::Addr(addr) => addr.to_string(),
    };
    let mut req = Vec::with_capacity(128);
    req.extend_from_slice(b"CONNECT ");
    req.extend_from_slice(authority.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(authority.as_bytes());
    req.extend_from_slice(b"\r\n");
    if let Some(auth) = auth {
        let plain = format!("{}:{}", auth.user.expose(), auth.password.expose());
        req.extend_from_slice(b"Proxy-Authorization: Basic ");
        req.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(plain)
                .as_bytes(),
        );
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Sends the CONNECT request and reads the proxy's answer head. On a 2xx, returns the bytes
/// read past the head (the tunnel's first bytes, usually none).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: Target<'_>,
    auth: Option<&ProxyAuth>,
) -> Result<Vec<u8>, ProxyError> {
    stream.write_all(&request(target, auth)).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        match answer(&buf)? {
            Some(used) => return Ok(buf.split_off(used)),
            None if buf.len() >= MAX_HEAD => {
                return Err(ProxyError::Malformed("answer head too large"))
            }
            None => {}
        }
    }
}

/// The length of a complete 2xx answer head at the start of `data`; `None` while incomplete.
fn answer(data: &[u8]) -> Result<Option<usize>, ProxyError> {
    match http1::parse_head(data) {
        Ok(None) => Ok(None),
        Ok(Some((head, used))) if (200..300).contains(&head.status) => Ok(Some(used)),
        Ok(Some((head, _))) => Err(ProxyError::ConnectRefused(head.status)),
        Err(_) => Err(ProxyError::Malformed("not an HTTP/1.x answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::scripted::Scripted;
    use super::*;
    use crate::config::Secret;

    fn run(
        input: &[u8],
        step: usize,
        auth: Option<&ProxyAuth>,
    ) -> (Result<Vec<u8>, ProxyError>, Scripted) {
        let mut peer = Scripted::new(input, step);
        let result = futures_lite::future::block_on(handshake(
            &mut peer,
            Target::Name("api.example.com", 443),
            auth,
        ));
        (result, peer)
    }

    #[test]
    fn sends_connect_with_basic_auth_and_keeps_bytes_past_the_head() {
        let auth = ProxyAuth {
            user: Secret::new("alice".into()),
            password: Secret::new("s3cret".into()),
        };
        let answer = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01";
        for step in [1, 7, 4096] {
            let (result, peer) = run(answer, step, Some(&auth));
            // What the handshake read past the head, then what it left unread: the tunnel.
            let mut tunnel = result.unwrap();
            tunnel.extend_from_slice(&peer.input[peer.at..]);
            assert_eq!(tunnel, b"\x16\x03\x01", "step {step}");
            assert_eq!(
                peer.written,
                b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\
                  Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n"
            );
        }
    }

    #[test]
    fn without_credentials_no_authorization_is_sent() {
        let (result, peer) = run(b"HTTP/1.0 200 OK\r\n\r\n", 4096, None);
        assert!(result.unwrap().is_empty());
        assert!(!String::from_utf8_lossy(&peer.written).contains("Proxy-Authorization"));
    }

    #[test]
    fn ipv6_targets_are_bracketed() {
        let req = request(Target::Name("::1", 8443), None);
        assert!(req.starts_with(b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n"));
        let req = request(Target::Addr("[::1]:9".parse().unwrap()), None);
        assert!(req.starts_with(b"CONNECT [::1]:9 "));
    }

    #[test]
    fn refusals_and_bad_answers_are_typed() {
        let (result, _) = run(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
            3,
            None,
        );
        assert!(matches!(result, Err(ProxyError::ConnectRefused(407))));
        let (result, _) = run(b"HTTP/1.1 200 OK\r\n", 4096, None);
        assert!(matches!(result, Err(ProxyError::Closed)));
        let (result, _) = run(b"SSH-2.0-OpenSSH\r\n\r\n", 4096, None);
        assert!(matches!(result, Err(ProxyError::Malformed(_))));
        let endless = [b"HTTP/1.1 200 OK\r\n".as_slice(), &[b'x'; 20_000]].concat();
        let (result, _) = run(&endless, 4096, None);
        assert!(matches!(result, Err(ProxyError::Malformed(_))));
    }
}
