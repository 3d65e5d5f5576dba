//! Parsing an account's `proxy` URL. Errors say what is wrong in fixed words, never with a piece
//! of the URL: its user info is a secret, and config errors go to terminals and logs.

use crate::config::Secret;

use super::{ProxyAuth, ProxyKind, ProxyUrl};

/// Why a proxy URL is not usable (the reason only, never the URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProxyUrlError(&'static str);

pub(super) fn parse(text: &str) -> Result<ProxyUrl, ProxyUrlError> {
    let fail = |reason| Err(ProxyUrlError(reason));
    let Some((scheme, rest)) = text.trim().split_once("://") else {
        return fail("must be a URL: http://host:port, socks5://host:port or socks5h://host:port");
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "http" => ProxyKind::Connect,
        "socks5" => ProxyKind::Socks5 {
            proxy_resolves: false,
        },
        "socks5h" => ProxyKind::Socks5 {
            proxy_resolves: true,
        },
        _ => return fail("scheme must be http, socks5 or socks5h"),
    };
    // The last `@` ends the user info, so a password with an unencoded `/` or `#` still parses.
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((info, hostport)) => (Some(info), hostport),
        None => (None, rest),
    };
    let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
    if hostport.contains(['/', '?', '#']) {
        return fail("must not have a path, query or fragment");
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return fail("has an unclosed `[` around its host");
        };
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None => return fail("must name a port (e.g. http://host:3128)"),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => return fail("must name a port (e.g. http://host:3128)"),
        }
    };
    if host.is_empty() {
        return fail("has no host");
    }
    let host_ok = if hostport.starts_with('[') {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !host_ok {
        return fail("host is not a valid host name or address");
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return fail("port must be a number from 1 to 65535"),
    };
    let auth = match userinfo {
        None => None,
        Some(info) => {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            let user = percent_decode(user)?;
            if user.is_empty() {
                return fail("user name must not be empty when user info is given");
            }
            Some(ProxyAuth {
                user: Secret::new(user),
                password: Secret::new(percent_decode(password)?),
            })
        }
    };
    Ok(ProxyUrl {
        kind,
        host: host.to_string(),
        port,
        auth,
    })
}

/// Decodes `%XX` escapes in user info.
fn percent_decode(s: &str) -> Result<String, ProxyUrlError> {
    let bad = || ProxyUrlError("user info has a bad percent escape or is not UTF-8");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            // from_str_radix alone would take a sign: `%+1` is not an escape.
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(bad());
            }
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(url: &ProxyUrl) -> (&str, &str) {
        let a = url.auth.as_ref().unwrap();
        (a.user.expose(), a.password.expose())
    }

    #[test]
    fn each_scheme_with_and_without_credentials() {
        let u = parse("http://alice:s3cret@proxy.corp:3128").unwrap();
        assert_eq!(u.kind, ProxyKind::Connect);
        assert_eq!((u.host.as_str(), u.port), ("proxy.corp", 3128));
        assert_eq!(auth(&u), ("alice", "s3cret"));

        let u = parse("socks5://127.0.0.1:1080/").unwrap();
        assert_eq!(
            u.kind,
            ProxyKind::Socks5 {
                proxy_resolves: false
            }
        );
        assert!(u.auth.is_none());

        let u = parse("SOCKS5H://bob@[::1]:1080").unwrap();
        assert_eq!(
            u.kind,
            ProxyKind::Socks5 {
                proxy_resolves: true
            }
        );
        assert_eq!((u.host.as_str(), u.port), ("::1", 1080));
        assert_eq!(auth(&u), ("bob", ""));
    }

    #[test]
    fn user_info_is_percent_decoded_and_may_hold_reserved_characters() {
        let u = parse("http://al%40ice:p%3Ass/w#rd@h:1").unwrap();
        assert_eq!(auth(&u), ("al@ice", "p:ss/w#rd"));
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for bad in [
            "proxy.corp:3128",
            "https://user:hunter2@h:1",
            "http://user:hunter2@h",
            "http://user:hunter2@:1",
            "http://user:hunter2@h:0",
            "http://user:hunter2@h:99999",
            "http://user:hunter2@h:1/path",
            "http://user:hunter2@ho st:1",
            "http://user:hunter2@[::1:1",
            "http://:hunter2@h:1",
            "http://user:hunter2%zz@h:1",
            "http://user:hunter2%+1@h:1",
            "http://user:hunter2@::1:1",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_hides_the_credentials() {
        let u = parse("socks5h://alice:s3cret@[::1]:1080").unwrap();
        assert_eq!(u.to_string(), "socks5h://***@[::1]:1080");
        let debug = format!("{u:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("alice"),
            "{debug}"
        );
        assert_eq!(parse("http://h:3128").unwrap().to_string(), "http://h:3128");
    }
}
