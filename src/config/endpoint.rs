//! An upstream `base_url`, parsed once into what dialing and the Host header need.

/// An upstream base URL, split into what dialing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `true` for https/wss.
    pub tls: bool,
    /// Host name or address literal (no brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1`.
    pub path: String,
}

impl Endpoint {
    /// Parses `http(s)://host[:port][/path]` (or `ws(s)://`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err("must start with https://, http://, wss:// or ws://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err("has no host".into());
        }
        if authority.contains('@') {
            return Err("must not carry credentials".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or("has an unclosed IPv6 bracket")?;
            let host = &v6[..end];
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or("has an invalid port")?,
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err("has an invalid IPv6 address".into());
            }
            (host.to_string(), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| "has an invalid port")?),
                None => (authority, default_port),
            };
            // A name or an IPv4 address: anything else (an IPv6 address without brackets, a
            // space, a quote) would not survive into the Host header and the URLs built from it.
            if host.is_empty() || !host.bytes().all(is_host_byte) {
                return Err("has an invalid host".into());
            }
            (host.to_string(), port)
        };
        if path.contains(['?', '#']) {
            return Err("must not carry a query or fragment".into());
        }
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("has a path with spaces or control characters".into());
        }
        Ok(Endpoint {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The WebSocket URL of the Responses endpoint.
    pub fn responses_ws_url(&self) -> String {
        self.ws_url("responses")
    }

    /// The WebSocket URL of the Realtime endpoint (without its query).
    pub fn realtime_ws_url(&self) -> String {
        self.ws_url("realtime")
    }

    fn ws_url(&self, resource: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}/{resource}", self.authority(), self.path)
    }
}

/// A byte of a host name or IPv4 address (RFC 3986 reg-name, without percent-encoding).
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        let e = Endpoint::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!((e.tls, e.port, e.path.as_str()), (true, 443, "/v1"));
        assert_eq!(e.responses_ws_url(), "wss://api.openai.com/v1/responses");
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert_eq!(e.authority(), "[::1]:9000");
        assert!(Endpoint::parse("http://u:p@h/").is_err());
        assert!(Endpoint::parse("http://h:99999/").is_err());
        // Found by fuzz/fuzz_targets/config.rs: hosts that the URLs built from them do not
        // carry (an unbracketed IPv6 address, a quote, an empty name), and paths that would
        // break the request line.
        for bad in [
            "https://a:b:443/v1",
            "https://a\"b/v1",
            "https://x]:1",
            "http://:80/v1",
            "http://[zz]:80",
            "http://h/v1\r\nX-Injected: 1",
            "http://h/a b",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let e = Endpoint::parse("http://my-host_1.example:8080/v1").unwrap();
        assert_eq!(Endpoint::parse(&e.responses_ws_url()).unwrap().host, e.host);
    }
}
