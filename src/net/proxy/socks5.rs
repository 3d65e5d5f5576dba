//! SOCKS5 tunnels (RFC 1928), with user/password authentication (RFC 1929) when the URL has
//! credentials. Every read has an exact length known from bytes already read, so nothing past
//! the proxy's reply is ever read.

use std::fmt;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ProxyAuth, ProxyError, Target};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// A SOCKS5 reply code other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply(pub u8);

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self.0 {
            0x01 => "general failure",
            0x02 => "connection not allowed by ruleset",
            0x03 => "network unreachable",
            0x04 => "host unreachable",
            0x05 => "connection refused",
            0x06 => "TTL expired",
            0x07 => "command not supported",
            0x08 => "address type not supported",
            _ => "unknown reply",
        };
        write!(f, "{text} (reply {:#04x})", self.0)
    }
}

/// The method negotiation: no authentication, plus user/password when there are credentials.
pub fn greeting(auth: Option<&ProxyAuth>) -> &'static [u8] {
    match auth {
        Some(_) => &[VERSION, 2, NO_AUTH, USER_PASS],
        None => &[VERSION, 1, NO_AUTH],
    }
}

/// The RFC 1929 user/password request.
pub fn auth_request(auth: &ProxyAuth) -> Result<Vec<u8>, ProxyError> {
    let user = auth.user.expose().as_bytes();
    let password = auth.password.expose().as_bytes();
    let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(password.len())) else {
        return Err(ProxyError::Unencodable(
            "user name or password longer than 255 bytes",
        ));
    };
    let mut req = Vec::with_capacity(3 + user.len() + password.len());
    req.push(1);
    req.push(ulen);
    req.extend_from_slice(user);
    req.push(plen);
    req.extend_from_slice(password);
    Ok(req)
}

/// The CONNECT request for `target`: a host name goes as a domain name (the proxy resolves it),
/// an address as IPv4 or IPv6.
pub fn connect_request(target: Target<'_>) -> Result<Vec<u8>, ProxyError> {
    let mut req = vec![VERSION, CMD_CONNECT, 0];
    let port = match target {
        Target::Name(host, port) => {
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => push_ip(&mut req, ip),
                Err(_) => {
                    let len = u8::try_from(host.len())
                        .map_err(|_| ProxyError::Unencodable("host name longer than 255 bytes"))?;
                    req.push(ATYP_DOMAIN);
                    req.push(len);
                    req.extend_from_slice(host.as_bytes());
                }
            }
            port
        }
        Target::Addr(addr) => {
            push_ip(&mut req, addr.ip());
            addr.port()
        }
    };
    req.extend_from_slice(&port.to_be_bytes());
    Ok(req)
}

fn push_ip(req: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            req.push(ATYP_V4);
            req.extend_from_slice(&v4.octets());
        }
        std::net::IpAddr::V6(v6) => {
            req.push(ATYP_V6);
            req.extend_from_slice(&v6.octets());
        }
    }
}

/// Negotiates a method, authenticates when asked, and asks for a tunnel to `target`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: Target<'_>,
    auth: Option<&ProxyAuth>,
) -> Result<(), ProxyError> {
    // Encoded before anything is sent, so an unencodable request sends nothing.
    let connect = connect_request(target)?;
    let login = auth.map(auth_request).transpose()?;
    stream.write_all(greeting(auth)).await?;
    stream.flush().await?;
    let mut choice = [0u8; 2];
    read_exact(stream, &mut choice).await?;
    if choice[0] != VERSION {
        return Err(ProxyError::Malformed("not a SOCKS5 method reply"));
    }
    match (choice[1], login) {
        (NO_AUTH, _) => {}
        (USER_PASS, Some(login)) => {
            stream.write_all(&login).await?;
            stream.flush().await?;
            let mut status = [0u8; 2];
            read_exact(stream, &mut status).await?;
            if status[1] != 0 {
                return Err(ProxyError::AuthRejected);
            }
        }
        (NO_ACCEPTABLE, _) => return Err(ProxyError::NoAcceptableMethod),
        _ => {
            return Err(ProxyError::Malformed(
                "proxy chose a method that was not offered",
            ))
        }
    }
    stream.write_all(&connect).await?;
    stream.flush().await?;
    let mut head = [0u8; 4];
    read_exact(stream, &mut head).await?;
    if head[0] != VERSION {
        return Err(ProxyError::Malformed("not a SOCKS5 reply"));
    }
    if head[1] != 0 {
        return Err(ProxyError::Socks5Reply(Reply(head[1])));
    }
    // The bound address: its length follows from its type.
    let addr_len = match head[3] {
        ATYP_V4 => 4,
        ATYP_V6 => 16,
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            read_exact(stream, &mut len).await?;
            usize::from(len[0])
        }
        _ => return Err(ProxyError::Malformed("unknown address type in reply")),
    };
    let mut bound = [0u8; 255 + 2];
    read_exact(stream, &mut bound[..addr_len + 2]).await?;
    Ok(())
}

/// `read_exact` with an early end of stream told as [`ProxyError::Closed`].
async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyError> {
    stream.read_exact(buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProxyError::Closed,
        _ => ProxyError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::super::scripted::Scripted;
    use super::*;
    use crate::config::Secret;

    fn alice() -> ProxyAuth {
        ProxyAuth {
            user: Secret::new("alice".into()),
            password: Secret::new("pw".into()),
        }
    }

    fn run(
        input: &[u8],
        step: usize,
        target: Target<'_>,
        auth: Option<&ProxyAuth>,
    ) -> (Result<(), ProxyError>, Scripted) {
        let mut peer = Scripted::new(input, step);
        let result = futures_lite::future::block_on(handshake(&mut peer, target, auth));
        (result, peer)
    }

    const OK_V4: &[u8] = &[5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];

    #[test]
    fn user_password_then_a_domain_name_target() {
        let script = [&[5, USER_PASS][..], &[1, 0], OK_V4, b"tunnel"].concat();
        for step in [1, 3, 4096] {
            let (result, peer) = run(
                &script,
                step,
                Target::Name("api.example", 443),
                Some(&alice()),
            );
            result.unwrap();
            assert_eq!(
                peer.written,
                [
                    &[5, 2, 0, 2][..],
                    &[1, 5],
                    b"alice",
                    &[2],
                    b"pw",
                    &[5, 1, 0, 3, 11],
                    b"api.example",
                    &[1, 187],
                ]
                .concat()
            );
            assert_eq!(
                peer.at,
                script.len() - b"tunnel".len(),
                "nothing past the reply is read"
            );
        }
    }

    #[test]
    fn no_auth_with_address_targets_and_a_domain_bound_address() {
        let reply = [&[5, 0][..], &[5, 0, 0, 3, 4], b"host", &[0, 80]].concat();
        let (result, peer) = run(
            &reply,
            2,
            Target::Addr("10.0.0.7:8080".parse().unwrap()),
            None,
        );
        result.unwrap();
        assert_eq!(
            peer.written,
            [&[5, 1, 0][..], &[5, 1, 0, 1, 10, 0, 0, 7, 0x1f, 0x90]].concat()
        );
        let v6 = connect_request(Target::Name("::1", 1)).unwrap();
        assert_eq!(v6[3], ATYP_V6);
        assert_eq!(v6.len(), 4 + 16 + 2);
    }

    #[test]
    fn each_failure_is_typed() {
        let target = Target::Name("h", 1);
        let (r, _) = run(&[5, 2, 1, 1], 4096, target, Some(&alice()));
        assert!(matches!(r, Err(ProxyError::AuthRejected)));
        let (r, _) = run(&[5, 0xff], 4096, target, None);
        assert!(matches!(r, Err(ProxyError::NoAcceptableMethod)));
        let (r, _) = run(&[5, USER_PASS], 4096, target, None);
        assert!(matches!(r, Err(ProxyError::Malformed(_))));
        let (r, _) = run(&[5, 0, 5, 5, 0, 1], 4096, target, None);
        assert!(matches!(r, Err(ProxyError::Socks5Reply(Reply(5)))));
        let (r, _) = run(&[4, 0], 4096, target, None);
        assert!(matches!(r, Err(ProxyError::Malformed(_))));
        let (r, _) = run(&[5, 0, 5, 0, 0, 9], 4096, target, None);
        assert!(matches!(r, Err(ProxyError::Malformed(_))));
        let (r, _) = run(&[5, 0, 5, 0, 0, 1, 1], 4096, target, None);
        assert!(matches!(r, Err(ProxyError::Closed)));
        let long = "h".repeat(256);
        let (r, peer) = run(&[], 4096, Target::Name(&long, 1), None);
        assert!(matches!(r, Err(ProxyError::Unencodable(_))));
        assert!(peer.written.is_empty());
        assert_eq!(
            ProxyError::Socks5Reply(Reply(5)).to_string(),
            "SOCKS5 proxy refused the connection: connection refused (reply 0x05)"
        );
    }
}
