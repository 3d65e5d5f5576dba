//! The one request the refresher makes: `POST token_url` with `grant_type=refresh_token`,
//! through the account's egress proxy when it has one (like every other byte of the account).
//! Blocking (std sockets, rustls), because it runs on the refresher's own thread, never on a
//! shard. The answer's tokens are secrets: errors name the status and OAuth error code only.

use sonic_rs::JsonValueTrait;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::rustls::{ClientConnection, StreamOwned};

use crate::config::{Endpoint, Secret};
use crate::net::proxy::{self as net_proxy, ProxyKind, ProxyUrl, Target};
use crate::net::tls;
use crate::protocol::http1::{self, BodyDecoder};

/// Longest token endpoint answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The longest token lifetime believed (about 31 years): a peer's `expires_in` or `exp` past it
/// is cut to it, so that adding a lifetime to an `Instant` or to Unix seconds cannot overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(1_000_000_000);

/// What the token endpoint issued.
#[derive(Debug)]
pub struct Issued {
    /// The new access token.
    pub access_token: Secret,
    /// The rotated refresh token, when the endpoint rotated it (OpenAI's are single-use).
    pub refresh_token: Option<Secret>,
    /// How long the access token lives, from `expires_in` or the token's own `exp` claim.
    pub lifetime: Option<Duration>,
}

/// Why a refresh did not produce a token.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The token endpoint could not be reached or the exchange broke off.
    #[error("token endpoint unreachable: {0}")]
    Io(#[from] std::io::Error),
    /// The account's egress proxy did not open the tunnel (never carries its credentials).
    #[error("egress proxy: {0}")]
    Proxy(String),
    /// TLS to the token endpoint could not be set up.
    #[error("token endpoint TLS: {0}")]
    Tls(String),
    /// The endpoint refused the refresh (e.g. 400 `invalid_grant`: the refresh token was used
    /// or revoked).
    #[error("token endpoint answered HTTP {status} ({code})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code, when the body had one and it looks like a code.
        code: String,
    },
    /// The answer was not a token response.
    #[error("token endpoint answer unreadable: {0}")]
    BadAnswer(&'static str),
}

/// Posts a refresh for `refresh_token` to `url` and reads the answer, the whole exchange
/// (connect, proxy, TLS, request, answer) within `timeout`.
pub fn refresh(
    url: &Endpoint,
    ca_file: Option<&Path>,
    proxy: Option<&ProxyUrl>,
    client_id: &str,
    refresh_token: &Secret,
    timeout: Duration,
) -> Result<Issued, RefreshError> {
    let body = sonic_rs::json!({
        "grant_type": "refresh_token",
        "client_id": client_id,
        "refresh_token": refresh_token.expose(),
        "scope": "openid profile email",
    })
    .to_string();
    let path = if url.path.is_empty() {
        "/"
    } else {
        url.path.as_str()
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         accept: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        url.authority(),
        body.len()
    );
    let answer = exchange(
        url,
        ca_file,
        proxy,
        &[head.as_bytes(), body.as_bytes()],
        timeout,
    )?;
    parse_answer(&answer)
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address"))
}

fn exchange(
    url: &Endpoint,
    ca_file: Option<&Path>,
    proxy: Option<&ProxyUrl>,
    parts: &[&[u8]],
    timeout: Duration,
) -> Result<Vec<u8>, RefreshError> {
    let first_hop = match proxy {
        Some(p) => resolve(&p.host, p.port)?,
        None => resolve(&url.host, url.port)?,
    };
    let deadline = Instant::now() + timeout;
    let mut tcp = Deadlined {
        tcp: TcpStream::connect_timeout(&first_hop, timeout)?,
        deadline,
    };
    if let Some(p) = proxy {
        tunnel(&mut tcp, p, url)?;
    }
    if url.tls {
        let config = tls::client_config(ca_file).map_err(|e| RefreshError::Tls(e.to_string()))?;
        let name = tls::server_name(&url.host).map_err(|e| RefreshError::Tls(e.to_string()))?;
        let conn = ClientConnection::new(Arc::clone(&config), name)
            .map_err(|e| RefreshError::Tls(e.to_string()))?;
        roundtrip(StreamOwned::new(conn, tcp), parts)
    } else {
        roundtrip(tcp, parts)
    }
}

/// Opens a tunnel to `url` through the account's egress proxy on `tcp` (the proxy handshake is
/// the shards' own, run here on blocking reads and writes).
fn tunnel(tcp: &mut Deadlined, proxy: &ProxyUrl, url: &Endpoint) -> Result<(), RefreshError> {
    let resolved;
    let target = match proxy.kind {
        ProxyKind::Socks5 {
            proxy_resolves: false,
        } => {
            resolved = resolve(&url.host, url.port)?;
            Target::Addr(resolved)
        }
        _ => Target::Name(&url.host, url.port),
    };
    let mut io = BlockingIo(tcp);
    let extra = futures_lite::future::block_on(net_proxy::handshake(&mut io, proxy, target))
        .map_err(|e| RefreshError::Proxy(e.to_string()))?;
    if !extra.is_empty() {
        // The token endpoint speaks only when asked: bytes before the request are not its.
        return Err(RefreshError::Proxy(
            "proxy sent bytes past its answer".into(),
        ));
    }
    Ok(())
}

/// A blocking socket whose every read and write ends by one deadline: per-call timeouts alone
/// let a peer that drips a byte now and then hold the refresher thread (and every other
/// account's refresh, and the start) for as long as it likes.
struct Deadlined {
    tcp: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    /// The time left, set as the socket's timeouts; an error once the deadline has passed.
    fn arm(&self) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "token exchange deadline passed",
            ));
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A blocking socket seen through the async I/O traits, for the proxy handshake on this thread
/// (every poll completes: the socket's deadline bounds each call).
struct BlockingIo<'a>(&'a mut Deadlined);

impl futures_lite::AsyncRead for BlockingIo<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.0.read(buf))
    }
}

impl futures_lite::AsyncWrite for BlockingIo<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.0.write(buf))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.0.flush())
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn roundtrip(mut stream: impl Read + Write, parts: &[&[u8]]) -> Result<Vec<u8>, RefreshError> {
    for part in parts {
        stream.write_all(part)?;
    }
    stream.flush()?;
    let mut answer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the answer read so far stands.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(answer);
        }
        if answer.len() + n > MAX_ANSWER {
            return Err(RefreshError::BadAnswer("answer too large"));
        }
        answer.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a whole token endpoint answer (head and body).
fn parse_answer(answer: &[u8]) -> Result<Issued, RefreshError> {
    let (head, used) = match http1::parse_head(answer) {
        Ok(Some(h)) => h,
        Ok(None) => return Err(RefreshError::BadAnswer("incomplete head")),
        Err(_) => return Err(RefreshError::BadAnswer("malformed head")),
    };
    let mut decoder = BodyDecoder::with_limit(head.framing, MAX_ANSWER as u64)
        .map_err(|_| RefreshError::BadAnswer("body too large"))?;
    let mut body = Vec::new();
    decoder
        .decode(&answer[used..], |b| body.extend_from_slice(b))
        .map_err(|_| RefreshError::BadAnswer("malformed body"))?;
    if !decoder.is_done() && !decoder.end_of_stream() {
        return Err(RefreshError::BadAnswer("body cut short"));
    }
    if head.status != 200 {
        return Err(RefreshError::Refused {
            status: head.status,
            code: error_code(&body),
        });
    }
    tokens(&body)
}

/// The OAuth `error` code of a refusal, kept only when it is a short code (never free text,
/// which could quote a token).
fn error_code(body: &[u8]) -> String {
    let code = sonic_rs::get_from_slice(body, ["error"])
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    if !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        code
    } else {
        "no error code".into()
    }
}

fn tokens(body: &[u8]) -> Result<Issued, RefreshError> {
    if crate::protocol::json_depth::check_depth(body, crate::protocol::json_depth::MAX_JSON_DEPTH)
        .is_err()
    {
        return Err(RefreshError::BadAnswer("nested too deep"));
    }
    let text = |name: &str| {
        sonic_rs::get_from_slice(body, [name])
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|s| !s.is_empty() && http::HeaderValue::from_str(s).is_ok())
    };
    let access = text("access_token").ok_or(RefreshError::BadAnswer("no access_token"))?;
    let lifetime = sonic_rs::get_from_slice(body, ["expires_in"])
        .ok()
        .and_then(|v| v.as_f64())
        .filter(|s| *s > 0.0 && *s < MAX_LIFETIME.as_secs_f64())
        .map(Duration::from_secs_f64)
        .or_else(|| jwt_lifetime(&access));
    Ok(Issued {
        access_token: Secret::new(access),
        refresh_token: text("refresh_token").map(Secret::new),
        lifetime,
    })
}

/// Time left until a JWT's `exp` claim, when `token` is a JWT with one (at most
/// [`MAX_LIFETIME`]).
pub fn jwt_lifetime(token: &str) -> Option<Duration> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    crate::protocol::json_depth::check_depth(&bytes, crate::protocol::json_depth::MAX_JSON_DEPTH)
        .ok()?;
    let exp = sonic_rs::get_from_slice(&bytes, ["exp"]).ok()?.as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)).min(MAX_LIFETIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn reads_tokens_and_lifetime() {
        let body = r#"{"access_token":"at-1","refresh_token":"rt-2","expires_in":3600,"x":1}"#;
        let issued = parse_answer(&answer("200 OK", body)).unwrap();
        assert_eq!(issued.access_token.expose(), "at-1");
        assert_eq!(issued.refresh_token.unwrap().expose(), "rt-2");
        assert_eq!(issued.lifetime, Some(Duration::from_secs(3600)));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
14\r\n{\"access_token\":\"a\"}\r\n0\r\n\r\n";
        let issued = parse_answer(chunked).unwrap();
        assert_eq!(issued.access_token.expose(), "a");
        assert!(issued.refresh_token.is_none() && issued.lifetime.is_none());
    }

    #[test]
    fn a_refusal_names_the_code_never_the_text() {
        let body = r#"{"error":"invalid_grant","error_description":"rt-secret was used"}"#;
        let err = parse_answer(&answer("400 Bad Request", body)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token endpoint answered HTTP 400 (invalid_grant)"
        );
        let body = r#"{"error":"bad rt-secret"}"#;
        let err = parse_answer(&answer("401 Unauthorized", body))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("rt-secret"), "{err}");
    }

    #[test]
    fn a_jwt_tells_its_expiry() {
        use base64::Engine;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"));
        let left = jwt_lifetime(&format!("eyJhbGciOiJub25lIn0.{payload}.sig")).unwrap();
        assert!(left <= Duration::from_secs(600) && left >= Duration::from_secs(590));
        assert_eq!(jwt_lifetime("not-a-jwt"), None);
    }

    #[test]
    fn a_dripping_endpoint_is_cut_off_at_the_deadline() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Answers one byte every 50 ms, far inside the per-read timeout, for 3 s in all.
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = peer.read(&mut head);
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n{\"access_token\":\"a\"}"
                .iter()
                .cycle()
                .take(60)
            {
                if peer.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let url = Endpoint::parse(&format!("http://127.0.0.1:{port}/oauth/token")).unwrap();
        let start = Instant::now();
        let result = refresh(
            &url,
            None,
            None,
            "client",
            &Secret::new("rt".into()),
            Duration::from_millis(500),
        );
        let took = start.elapsed();
        assert!(
            matches!(result, Err(RefreshError::Io(ref e)) if e.kind() == std::io::ErrorKind::TimedOut
                || e.kind() == std::io::ErrorKind::WouldBlock),
            "{result:?}"
        );
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        server.join().unwrap();
    }

    #[test]
    fn a_far_expiry_is_cut_to_the_longest_lifetime() {
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"exp\":{}}}", u64::MAX));
        let access = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        assert_eq!(jwt_lifetime(&access), Some(MAX_LIFETIME));
        let body = format!(r#"{{"access_token":"{access}"}}"#);
        let issued = parse_answer(&answer("200 OK", &body)).unwrap();
        let lifetime = issued.lifetime.unwrap();
        assert_eq!(lifetime, MAX_LIFETIME);
        // What the refresher does with it must not overflow.
        let _ = std::time::Instant::now() + lifetime;
        let _ = crate::oauth::state_file::unix_now() + lifetime.as_secs();
    }
}
