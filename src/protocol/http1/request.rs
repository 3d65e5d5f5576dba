//! A client's request head, parsed strictly: its body framing decided once, every ambiguous
//! form refused (RFC 9112 §6.1/§6.3), so nothing in front of the gateway can read another
//! request boundary than it does.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use super::head::{has_token, tokens};
use super::headers::Headers;
use super::Framing;
use crate::protocol::error_body::{ErrorType, GatewayError};

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most headers accepted in one request (Codex sends about 15).
pub const MAX_HEADERS: usize = 96;
/// Why a request is refused before it is served. Each refusal is answered and then the
/// connection closes: after a framing error nobody can tell where a next request would start
/// (RFC 9112 §6.3), so reading on would let a client smuggle one. Messages never quote header
/// values (they may carry keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not valid HTTP/1.x (httparse refused it; obs-fold header lines land here).
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    /// A line of the head ends in a bare LF instead of CRLF.
    #[error("malformed request head: a line ends in a bare LF (use CRLF)")]
    BareLf,
    /// More headers than [`MAX_HEADERS`].
    #[error("too many request headers (at most 96)")]
    TooManyHeaders,
    /// A head larger than [`MAX_HEAD_BYTES`].
    #[error("request head too large (at most 32768 bytes)")]
    HeadTooLarge,
    /// `Content-Length` and `Transfer-Encoding` together.
    #[error("Content-Length and Transfer-Encoding together are refused")]
    LengthAndTransferEncoding,
    /// More than one `Content-Length` (repeated header or list form).
    #[error("more than one Content-Length")]
    RepeatedLength,
    /// A `Content-Length` that is not a plain decimal number.
    #[error("Content-Length is not a decimal number")]
    BadLength,
    /// A `Transfer-Encoding` whose last coding is not `chunked`, or `chunked` twice.
    #[error("Transfer-Encoding must end in a single chunked")]
    NotChunked,
    /// A transfer coding other than `chunked` before the final `chunked` (not implemented).
    #[error("only the chunked transfer coding is implemented")]
    UnknownCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request (its framing cannot be trusted).
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingHttp10,
    /// A WebSocket upgrade over HTTP/1.0 (RFC 6455 needs HTTP/1.1).
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    UpgradeHttp10,
    /// A WebSocket upgrade request with a body (its bytes would be read as frames).
    #[error("a WebSocket upgrade request cannot carry a body")]
    UpgradeWithBody,
    /// An HTTP/1.1 request without `Host`, or any request with more than one (RFC 9112 §3.2:
    /// a proxy in front could route by one and the gateway read another).
    #[error("the request needs exactly one Host header")]
    Host,
}

impl Refusal {
    /// The HTTP status the refusal is answered with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::TooManyHeaders | Refusal::HeadTooLarge => 431,
            Refusal::UnknownCoding => 501,
            _ => 400,
        }
    }

    /// The label of the `http_refused{reason}` counter and the log line.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::BareLf => "bare_lf",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::LengthAndTransferEncoding => "length_and_transfer_encoding",
            Refusal::RepeatedLength => "repeated_length",
            Refusal::BadLength => "bad_length",
            Refusal::NotChunked => "not_chunked",
            Refusal::UnknownCoding => "unknown_coding",
            Refusal::TransferEncodingHttp10 => "transfer_encoding_http10",
            Refusal::UpgradeHttp10 => "upgrade_http10",
            Refusal::UpgradeWithBody => "upgrade_with_body",
            Refusal::Host => "host",
        }
    }

    /// The OpenAI-style error the client gets.
    pub fn to_error(self) -> GatewayError {
        let code = match self.status() {
            431 => "request_header_fields_too_large",
            501 => "not_implemented",
            _ => "bad_request",
        };
        GatewayError::new(
            self.status(),
            ErrorType::InvalidRequest,
            code,
            self.to_string(),
        )
    }
}

/// A parsed request head. Header names are lower-cased. The default is an empty head to parse
/// into ([`parse_request_into`]).
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// Method, e.g. `GET`: a standard one is a borrowed static string (no allocation per
    /// request), another a copy.
    pub method: Cow<'static, str>,
    /// Path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// `true` for HTTP/1.0.
    pub http10: bool,
    /// Headers in order, names lower-cased.
    pub headers: Headers,
    /// How the request body is delimited, checked once against RFC 9112 §6.3:
    /// `Length(0)` when there is none.
    pub body: Framing,
}

impl RequestHead {
    /// The first value of a header (name lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The first value of a header (name lower-case) when it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `true` when a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .any(|(_, v)| has_token(v, token))
    }

    /// `true` when the client asked to keep the connection open after this request.
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            self.header_has_token("connection", "keep-alive")
        } else {
            !self.header_has_token("connection", "close")
        }
    }
}

/// Parses a request head from the start of `buf`: `None` when more bytes are needed, else the
/// head and the bytes it took. The gateway's front door, its admin listener and the mock upstream
/// all read requests with it; the fuzz targets (`fuzz/`) reach it here.
///
/// httparse fills an uninitialised header array: an initialised one is [`MAX_HEADERS`] empty
/// headers (3 KiB) written on every call, whatever the head holds (five lines from the load
/// tool's SSE client).
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, Refusal> {
    let mut head = RequestHead::default();
    Ok(parse_request_into(buf, &mut head)?.map(|used| (head, used)))
}

/// As [`parse_request`], into `head`: a complete head replaces it, reusing its buffers (path,
/// header lines), so a kept-alive connection's next request allocates none; `head` is left as it
/// was when the head is incomplete or refused.
pub fn parse_request_into(buf: &[u8], head: &mut RequestHead) -> Result<Option<usize>, Refusal> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let used = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(e) => return Err(Refusal::Malformed(e)),
    };
    if has_bare_lf(&buf[..used]) {
        return Err(Refusal::BareLf);
    }
    let http10 = req.version == Some(0);
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (hosts == 0 && !http10) {
        return Err(Refusal::Host);
    }
    let body = body_framing(http10, req.headers)?;
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    head.method = method_of(req.method.unwrap_or(""));
    head.path.clear();
    head.path.push_str(path);
    head.query = query.map(str::to_string);
    head.http10 = http10;
    headers_into(&mut head.headers, req.headers);
    head.body = body;
    Ok(Some(used))
}

/// The methods a request names without a copy of its own.
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// `method` as stored: a standard one is borrowed (methods are case-sensitive, RFC 9110 §9.1).
fn method_of(method: &str) -> Cow<'static, str> {
    match METHODS.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_string()),
    }
}

/// The parsed header lines, copied once into `headers` (emptied first), grown at most once.
fn headers_into(headers: &mut Headers, parsed: &[httparse::Header<'_>]) {
    let (names, values) = parsed
        .iter()
        .fold((0, 0), |(n, v), h| (n + h.name.len(), v + h.value.len()));
    headers.clear();
    headers.reserve(parsed.len(), names, values);
    for h in parsed {
        headers.push(h.name, h.value);
    }
}

/// `true` when a line of `head` ends in LF without CR. httparse accepts that (RFC 9112 §2.2
/// allows it); a proxy in front that does not would see other header lines than the gateway.
/// Line ends are found with `memchr`: a byte-by-byte look at every request head was a visible
/// part of an HTTP request's cost (`perf/README.md`, session 9).
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// The request body's framing under RFC 9112 §6.1 and §6.3, refusing every form two parsers
/// could read differently: `Content-Length` with `Transfer-Encoding`, more than one length
/// (repeated or as a list), a length that is not plain digits (`+5`, `5 5`, `0x5`), a coding
/// list that does not end in one `chunked`, and any `Transfer-Encoding` from HTTP/1.0.
fn body_framing(http10: bool, headers: &[httparse::Header<'_>]) -> Result<Framing, Refusal> {
    let mut length: Option<&[u8]> = None;
    let mut has_te = false;
    let mut codings: Vec<&[u8]> = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.replace(h.value).is_some() {
                return Err(Refusal::RepeatedLength);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            // Empty list elements are ignored (RFC 9110 §5.6.1).
            codings.extend(tokens(h.value).filter(|c| !c.is_empty()));
        }
    }
    match (has_te, length) {
        (true, _) if http10 => Err(Refusal::TransferEncodingHttp10),
        (true, Some(_)) => Err(Refusal::LengthAndTransferEncoding),
        (true, None) => chunked_only(&codings),
        (false, Some(v)) => parse_length(v).map(Framing::Length),
        (false, None) => Ok(Framing::Length(0)),
    }
}

/// The codings of every `Transfer-Encoding` line, in order: exactly one `chunked`, last.
fn chunked_only(codings: &[&[u8]]) -> Result<Framing, Refusal> {
    let is_chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
    match codings.split_last() {
        Some((last, rest)) if is_chunked(last) => {
            if rest.iter().any(is_chunked) {
                Err(Refusal::NotChunked)
            } else if rest.is_empty() {
                Ok(Framing::Chunked)
            } else {
                Err(Refusal::UnknownCoding)
            }
        }
        _ => Err(Refusal::NotChunked),
    }
}

/// `1*DIGIT` (httparse already trimmed the surrounding whitespace), within `u64`.
fn parse_length(value: &[u8]) -> Result<u64, Refusal> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::BadLength);
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(Refusal::BadLength)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_are_borrowed_others_copied() {
        let method = |raw: &[u8]| parse_request(raw).unwrap().unwrap().0.method;
        assert!(matches!(
            method(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Cow::Borrowed("POST")
        ));
        let other = method(b"PURGE / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(&other, Cow::Owned(m) if m == "PURGE"));
        assert!(matches!(
            method(b"post / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Cow::Owned(_)
        ));
    }

    #[test]
    fn parses_head_and_leaves_rest() {
        let raw = b"GET /v1/responses?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\nEXTRA";
        let (head, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(head.path, "/v1/responses");
        assert_eq!(head.query.as_deref(), Some("x=1"));
        assert!(head.header_has_token("connection", "upgrade"));
        assert_eq!(head.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(&raw[used..], b"EXTRA");
        assert!(head.keep_alive());
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost").unwrap().is_none());
        assert!(parse_request(b"\x00\x01 garbage\r\n\r\n").is_err());
        assert_eq!(head.body, Framing::Length(0));
    }

    #[test]
    fn a_head_parsed_into_another_replaces_it_in_its_buffers() {
        let first = b"POST /v1/responses?a=1 HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nX-Long: 0123456789\r\n\r\n";
        let (mut head, _) = parse_request(first).unwrap().unwrap();
        let path_at = head.path.as_ptr();
        // Incomplete, then refused: the head stays as it was.
        assert_eq!(
            parse_request_into(b"GET / HTTP/1.1\r\nHo", &mut head),
            Ok(None)
        );
        assert!(parse_request_into(b"GET / HTTP/1.1\r\n\r\n", &mut head).is_err());
        assert_eq!(
            (head.path.as_str(), head.body),
            ("/v1/responses", Framing::Length(5))
        );
        let next = b"GET /v1/models HTTP/1.1\r\nhost: b\r\n\r\nrest";
        assert_eq!(
            parse_request_into(next, &mut head),
            Ok(Some(next.len() - 4))
        );
        let fresh = parse_request(next).unwrap().unwrap().0;
        assert_eq!(
            (
                &*head.method,
                head.path.as_str(),
                head.query.as_deref(),
                head.http10,
                head.body
            ),
            (
                &*fresh.method,
                fresh.path.as_str(),
                None,
                false,
                Framing::Length(0)
            )
        );
        assert_eq!(head.headers, fresh.headers);
        assert_eq!(head.path.as_ptr(), path_at, "the path's buffer was reused");
    }

    #[test]
    fn bare_lf_is_found_as_a_byte_by_byte_look_would() {
        let reference = |head: &[u8]| {
            head.iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
        };
        for head in [
            &b""[..],
            b"\n",
            b"\r\n",
            b"a\r\nb\r\n\r\n",
            b"a\r\nb\n\r\n",
            b"\na",
            b"a\r\r\n\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(has_bare_lf(head), reference(head), "{head:?}");
        }
    }

    fn refusal(raw: &str) -> Option<Refusal> {
        parse_request(raw.as_bytes()).err()
    }

    fn framing(raw: &str) -> Framing {
        parse_request(raw.as_bytes()).unwrap().unwrap().0.body
    }

    #[test]
    fn body_framing_follows_rfc_9112() {
        let post = "POST / HTTP/1.1\r\nHost: a\r\n";
        assert_eq!(
            framing(&format!("{post}Content-Length:  12 \r\n\r\n")),
            Framing::Length(12)
        );
        assert_eq!(
            framing(&format!("{post}Content-Length: 007\r\n\r\n")),
            Framing::Length(7)
        );
        assert_eq!(
            framing(&format!("{post}Transfer-Encoding: Chunked\r\n\r\n")),
            Framing::Chunked
        );
        let refused = [
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked",
                Refusal::LengthAndTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5",
                Refusal::LengthAndTransferEncoding,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 6",
                Refusal::RepeatedLength,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 5",
                Refusal::RepeatedLength,
            ),
            ("Content-Length: 5, 5", Refusal::BadLength),
            ("Content-Length: +5", Refusal::BadLength),
            ("Content-Length: -1", Refusal::BadLength),
            ("Content-Length: 5 5", Refusal::BadLength),
            ("Content-Length: 0x5", Refusal::BadLength),
            ("Content-Length: ", Refusal::BadLength),
            ("Content-Length: 99999999999999999999", Refusal::BadLength),
            ("Transfer-Encoding: gzip", Refusal::NotChunked),
            ("Transfer-Encoding: chunked, gzip", Refusal::NotChunked),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
                Refusal::NotChunked,
            ),
            ("Transfer-Encoding: chunked, chunked", Refusal::NotChunked),
            ("Transfer-Encoding: , chunked, chunked", Refusal::NotChunked),
            ("Transfer-Encoding: ", Refusal::NotChunked),
            ("Transfer-Encoding: gzip, chunked", Refusal::UnknownCoding),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
                Refusal::UnknownCoding,
            ),
        ];
        for (headers, want) in refused {
            assert_eq!(
                refusal(&format!("{post}{headers}\r\n\r\n")),
                Some(want),
                "{headers}"
            );
        }
        assert_eq!(
            refusal("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(Refusal::TransferEncodingHttp10)
        );
    }

    #[test]
    fn an_http11_request_needs_exactly_one_host() {
        assert_eq!(refusal("GET / HTTP/1.1\r\n\r\n"), Some(Refusal::Host));
        assert_eq!(
            refusal("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Some(Refusal::Host)
        );
        assert_eq!(
            refusal("GET / HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n"),
            Some(Refusal::Host)
        );
        assert_eq!(Refusal::Host.status(), 400);
        assert!(parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        assert!(parse_request(b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n")
            .unwrap()
            .is_some());
    }

    #[test]
    fn bare_lf_obs_fold_and_limits_are_refused() {
        assert_eq!(
            refusal("GET / HTTP/1.1\nHost: a\r\n\r\n"),
            Some(Refusal::BareLf)
        );
        assert_eq!(
            refusal("GET / HTTP/1.1\r\nHost: a\n\n"),
            Some(Refusal::BareLf)
        );
        assert!(matches!(
            refusal("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
            Some(Refusal::Malformed(_))
        ));
        assert!(matches!(
            refusal("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            Some(Refusal::Malformed(_))
        ));
        let many = "X-A: b\r\n".repeat(MAX_HEADERS + 1);
        assert_eq!(
            refusal(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Some(Refusal::TooManyHeaders)
        );
        for r in [
            Refusal::BareLf,
            Refusal::HeadTooLarge,
            Refusal::UnknownCoding,
        ] {
            let err = r.to_error();
            assert_eq!(err.status, r.status());
        }
    }
}
