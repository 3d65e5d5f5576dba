//! HTTP/1.1 ingress on a shard's listener: routes a request, checks the client key, turns
//! `GET /v1/responses` with `Upgrade: websocket` into a client session and hands
//! `POST /v1/responses` to the HTTP front door.

use std::rc::Rc;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use http::{HeaderName, HeaderValue};

use crate::net::read_buf::ReadBuf;
use crate::net::ClientStream;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::runtime::TcpStream;
use crate::usage::RequestType;

use super::armed_timer::ShardDeadline;
use super::auth::{presented_key, ClientIdentity, KeptKey};
use super::counters::bump;
use super::http_front::{self, After};
use super::http_head::{self, HeadError};
use super::models;
use super::realtime;
use super::session::{self, ClientWs, Session};
use super::tls_accept;
use super::turn::Driver;
use super::upstream::TURN_STATE;
use super::Shard;
use crate::net::PrefixedStream;
use crate::protocol::http1::{self, Framing, RequestHead};

/// How long a client may take to send a request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Paths that serve the Responses API (as the reference gateway accepts them).
fn is_responses_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/responses" | "/responses" | "/backend-api/codex/responses"
    )
}

/// `Some(None)` for the model list (`/v1/models`), `Some(Some(id))` for one model.
fn models_path(path: &str) -> Option<Option<&str>> {
    let rest = path
        .strip_prefix("/v1/models")
        .or_else(|| path.strip_prefix("/models"))?;
    match rest.strip_prefix('/') {
        None if rest.is_empty() => Some(None),
        Some(id) if !id.is_empty() && !id.contains('/') => Some(Some(id)),
        _ => None,
    }
}

/// Answers `GET /v1/models` (`id` = `None`) or `GET /v1/models/{id}` for `group`.
async fn list_models(
    shard: &Shard,
    stream: &mut ClientStream,
    group: &str,
    id: Option<&str>,
    keep_alive: bool,
) -> std::io::Result<()> {
    let indices = shard.groups.get(group).map_or(&[][..], Vec::as_slice);
    let accounts = &shard.config.accounts;
    match id {
        None => {
            let body = models::list_body(accounts, indices);
            http_head::write_json(stream, 200, &body, &[], keep_alive).await
        }
        Some(id) => match models::model_body(accounts, indices, id) {
            Some(body) => http_head::write_json(stream, 200, &body, &[], keep_alive).await,
            None => {
                let err = GatewayError::new(
                    404,
                    ErrorType::InvalidRequest,
                    "model_not_found",
                    format!("The model `{id}` does not exist or you do not have access to it."),
                );
                http_head::write_error(stream, &err, &[], keep_alive).await
            }
        },
    }
}

/// Client headers passed on to upstream (session and Codex metadata, never credentials), besides
/// every `x-codex-*` one.
const FORWARDED: [&str; 8] = [
    "session-id",
    "session_id",
    "thread-id",
    "conversation_id",
    "x-client-request-id",
    "originator",
    "user-agent",
    "accept-language",
];

/// The name a client header is passed on to upstream under, when it is passed on: a static one
/// for [`FORWARDED`] (its name is not copied per request), a copy for `x-codex-*`.
fn forwarded_name(name: &str) -> Option<HeaderName> {
    match FORWARDED.iter().find(|n| **n == name) {
        Some(known) => Some(HeaderName::from_static(known)),
        None if name.starts_with("x-codex-") => HeaderName::from_bytes(name.as_bytes()).ok(),
        None => None,
    }
}

/// Serves one accepted connection until it is closed or upgraded (after the TLS handshake when
/// the listener speaks TLS). Until its first `POST` the connection's task holds no HTTP turn, so
/// a WebSocket session's task is not sized for one; from that `POST` on, the connection runs in
/// [`serve_posts`].
pub async fn serve_connection(shard: Rc<Shard>, tcp: TcpStream) {
    let Some(mut stream) = tls_accept::open(&shard, tcp, HEAD_TIMEOUT).await else {
        return;
    };
    let mut buf = http_head::conn_buf();
    loop {
        let mut head = RequestHead::default();
        if !next_head(&shard, &mut stream, &mut buf, None, &mut head).await {
            return;
        }
        if is_turn_post(&head) {
            // Boxed once for the connection, not once per request.
            return Box::pin(serve_posts(shard, stream, buf, head)).await;
        }
        match route(&shard, &mut stream, head, &mut buf).await {
            Routed::KeepAlive => continue,
            Routed::Done => return,
            Routed::Upgrade(driver) => {
                // As [`into_session`], inline: that call's future would hold a second copy of
                // the stream in every session's task.
                let tls = stream.is_tls();
                let stream = PrefixedStream::recording(buf.into_rest(), stream);
                let ws = session::upgraded_ws(stream).await;
                run_session(shard, ws, driver, tls).await;
                return;
            }
        }
    }
}

/// A connection from its first `POST` (`head`) on: its HTTP turns run inline, in the state boxed
/// once for the connection (a turn's future boxed per `POST` was an allocation and a copy of
/// the whole future, ~7.5 KiB, per request), each next head read into the last one's buffers,
/// its other requests as before.
async fn serve_posts(
    shard: Rc<Shard>,
    mut stream: ClientStream,
    mut buf: ReadBuf,
    mut head: RequestHead,
) {
    let mut kept = http_front::Kept::default();
    loop {
        let routed = if is_turn_post(&head) {
            post(&shard, &mut stream, &head, &mut buf, &mut kept).await
        } else {
            route(&shard, &mut stream, std::mem::take(&mut head), &mut buf).await
        };
        match routed {
            Routed::KeepAlive => {}
            Routed::Done => return,
            Routed::Upgrade(driver) => {
                // A session has no use for what its connection kept for POSTs.
                drop(kept);
                return into_session(shard, stream, buf, driver).await;
            }
        }
        // The connection's timer (made at its first turn) times its next head.
        if !next_head(
            &shard,
            &mut stream,
            &mut buf,
            kept.timer.as_mut(),
            &mut head,
        )
        .await
        {
            return;
        }
    }
}

/// Reads the connection's next request head into `head`, under `timer` when it has one; `false`
/// once the connection is over (closed, or its head timed out or was refused: then answered).
async fn next_head(
    shard: &Shard,
    stream: &mut ClientStream,
    buf: &mut ReadBuf,
    timer: Option<&mut ShardDeadline>,
    head: &mut RequestHead,
) -> bool {
    let read = match timer {
        Some(t) => http_head::read_head_under(stream, buf, t, HEAD_TIMEOUT, head).await,
        None => http_head::read_head(stream, buf, HEAD_TIMEOUT, head).await,
    };
    match read {
        Ok(()) => true,
        Err(HeadError::Closed | HeadError::Io(_)) => false,
        Err(HeadError::Timeout) => {
            let err = GatewayError::new(
                408,
                ErrorType::InvalidRequest,
                "request_timeout",
                "request head not received in time",
            );
            let _ = http_head::write_error(stream, &err, &[], false).await;
            false
        }
        Err(HeadError::Refused(refusal)) => {
            refuse_request(shard, stream, refusal).await;
            false
        }
    }
}

/// A `POST` to a Responses path: an HTTP turn.
fn is_turn_post(head: &RequestHead) -> bool {
    &*head.method == "POST" && is_responses_path(&head.path)
}

/// Serves an HTTP turn ([`is_turn_post`]); `kept` is what the connection keeps for its turns.
async fn post(
    shard: &Rc<Shard>,
    stream: &mut ClientStream,
    head: &RequestHead,
    buf: &mut ReadBuf,
    kept: &mut http_front::Kept,
) -> Routed {
    let identity = match check_client(shard, head, Some(&mut kept.key)) {
        Ok(id) => id,
        Err((err, headers)) => return refuse(stream, &err, headers).await,
    };
    let forward = forwarded(head);
    match http_front::serve(shard, stream, head, buf, identity, forward, kept).await {
        After::KeepAlive => Routed::KeepAlive,
        After::Close => Routed::Done,
    }
}

/// Turns an upgraded connection into a client session (after a `POST`, in [`serve_posts`]'s
/// boxed state).
async fn into_session(shard: Rc<Shard>, stream: ClientStream, buf: ReadBuf, driver: Box<Driver>) {
    // Recorded until the first frame says whether the session stays on this shard.
    let tls = stream.is_tls();
    let stream = PrefixedStream::recording(buf.into_rest(), stream);
    let ws = session::upgraded_ws(stream).await;
    run_session(shard, ws, driver, tls).await;
}

enum Routed {
    KeepAlive,
    Done,
    /// The 101 was written; the connection becomes a session, its turns run by this driver.
    Upgrade(Box<Driver>),
}

/// Serves one request other than an HTTP turn ([`post`]).
async fn route(
    shard: &Rc<Shard>,
    stream: &mut ClientStream,
    head: RequestHead,
    buf: &mut ReadBuf,
) -> Routed {
    // A body nobody reads would be parsed as the next request: close after answering instead.
    let keep_alive = head.keep_alive() && head.body == Framing::Length(0);
    let done = |ok: std::io::Result<()>| match ok {
        Ok(()) if keep_alive => Routed::KeepAlive,
        _ => Routed::Done,
    };
    match (&*head.method, head.path.as_str()) {
        ("GET", "/healthz") => {
            done(http_head::write_json(stream, 200, r#"{"status":"ok"}"#, &[], keep_alive).await)
        }
        ("GET", p) if is_responses_path(p) => upgrade(shard, stream, head).await,
        ("GET", p) if models_path(p).is_some() => {
            let identity = match check_client(shard, &head, None) {
                Ok(id) => id,
                Err((err, headers)) => return refuse(stream, &err, headers).await,
            };
            done(
                list_models(
                    shard,
                    stream,
                    &identity.group,
                    models_path(p).flatten(),
                    keep_alive,
                )
                .await,
            )
        }
        ("GET", p) if realtime::is_realtime_path(p) => {
            if let Some(refusal) = upgrade_framing(&head) {
                return refuse_request(shard, stream, refusal).await;
            }
            // Boxed: a realtime session's future is large and lives only on this path.
            Box::pin(realtime::serve(shard, stream, head, buf.take_rest())).await;
            Routed::Done
        }
        (_, p) if is_responses_path(p) => {
            let err = GatewayError::new(
                405,
                ErrorType::InvalidRequest,
                "method_not_allowed",
                format!(
                    "{} {p} is not served here; use POST, or GET with Upgrade: websocket",
                    head.method
                ),
            );
            done(http_head::write_error(stream, &err, &[("allow", "GET, POST")], keep_alive).await)
        }
        (_, p) => {
            bump(&shard.counters.not_found);
            let err = GatewayError::new(
                404,
                ErrorType::InvalidRequest,
                "not_found",
                format!("unknown route {} {p}", head.method),
            );
            done(http_head::write_error(stream, &err, &[], keep_alive).await)
        }
    }
}

/// An error to answer before closing, with its extra headers.
pub(super) type Refusal = (GatewayError, &'static [(&'static str, &'static str)]);

/// Checks the client key (and refuses keys in the query string); the error and its extra headers
/// otherwise. `kept`: the connection's last accepted key, for its `POST`s ([`KeptKey`]).
fn check_client(
    shard: &Shard,
    head: &RequestHead,
    kept: Option<&mut KeptKey>,
) -> Result<ClientIdentity, Refusal> {
    let key = presented_key(head.header("authorization"), head.header("x-api-key"));
    check_client_key(shard, head, key, kept)
}

/// As [`check_client`], with the key already taken from the request (a realtime client may
/// present it as a WebSocket subprotocol).
pub(super) fn check_client_key(
    shard: &Shard,
    head: &RequestHead,
    key: Option<&[u8]>,
    kept: Option<&mut KeptKey>,
) -> Result<ClientIdentity, Refusal> {
    if let Some(q) = &head.query {
        if q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            k == "key" || k == "api_key"
        }) {
            bump(&shard.counters.bad_requests);
            let err = GatewayError::new(
                400,
                ErrorType::InvalidRequest,
                "api_key_in_query",
                "API keys in the query string are refused; send Authorization: Bearer <key>",
            );
            return Err((err, &[]));
        }
    }
    let identity = key.and_then(|k| match kept {
        Some(kept) => shard.auth.authenticate_kept(k, kept),
        None => shard.auth.authenticate(k),
    });
    match identity {
        Some(id) => Ok(id),
        None => {
            bump(&shard.counters.auth_failures);
            let err = GatewayError::new(
                401,
                ErrorType::Authentication,
                "invalid_api_key",
                "missing or invalid API key; send Authorization: Bearer <key>",
            );
            Err((err, &[("www-authenticate", "Bearer")]))
        }
    }
}

/// The client headers passed on to upstream. Their values are views of one copy of them all,
/// not a copy each (a Codex-shaped request passes on six).
pub(super) fn forwarded(head: &RequestHead) -> Vec<(HeaderName, HeaderValue)> {
    let lines = || {
        head.headers
            .iter()
            .filter_map(|(n, v)| Some((forwarded_name(n)?, v)))
    };
    let (count, bytes) = lines().fold((0, 0), |(c, b), (_, v)| (c + 1, b + v.len()));
    if count == 0 {
        return Vec::new();
    }
    let mut values = Vec::with_capacity(bytes);
    for (_, v) in lines() {
        values.extend_from_slice(v);
    }
    let values = Bytes::from(values);
    let mut at = 0;
    let mut out = Vec::with_capacity(count);
    for (name, v) in lines() {
        let value = values.slice(at..at + v.len());
        at += v.len();
        if let Ok(value) = HeaderValue::from_maybe_shared(value) {
            out.push((name, value));
        }
    }
    out
}

/// Why a WebSocket upgrade request cannot be one: over HTTP/1.0, or with a body.
fn upgrade_framing(head: &RequestHead) -> Option<http1::Refusal> {
    if head.http10 {
        return Some(http1::Refusal::UpgradeHttp10);
    }
    if head.body != Framing::Length(0) {
        return Some(http1::Refusal::UpgradeWithBody);
    }
    None
}

async fn upgrade(shard: &Rc<Shard>, stream: &mut ClientStream, head: RequestHead) -> Routed {
    if let Some(refusal) = upgrade_framing(&head) {
        return refuse_request(shard, stream, refusal).await;
    }
    let identity = match check_client(shard, &head, None) {
        Ok(id) => id,
        Err((err, headers)) => return refuse(stream, &err, headers).await,
    };
    let is_upgrade = head.header_has_token("connection", "upgrade")
        && head
            .header("upgrade")
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if !is_upgrade {
        let err = GatewayError::new(
            426,
            ErrorType::InvalidRequest,
            "upgrade_required",
            "WebSocket upgrade required (Upgrade: websocket)",
        );
        return refuse(stream, &err, &[("upgrade", "websocket")]).await;
    }
    let key = head.header("sec-websocket-key");
    let version_ok = head
        .header("sec-websocket-version")
        .is_some_and(|v| v.trim_ascii() == b"13");
    let Some(key) = key.filter(|_| version_ok) else {
        bump(&shard.counters.bad_requests);
        let err = GatewayError::new(
            400,
            ErrorType::InvalidRequest,
            "bad_websocket_handshake",
            "Sec-WebSocket-Key and Sec-WebSocket-Version: 13 are required",
        );
        return refuse(stream, &err, &[("sec-websocket-version", "13")]).await;
    };
    if !shard.try_open_session(&identity.key_id) {
        bump(&shard.counters.session_cap_rejections);
        let err = GatewayError::new(
            429,
            ErrorType::RateLimit,
            "too_many_sessions",
            "Too many open WebSocket connections for this key, please retry later",
        );
        return refuse(stream, &err, &[("retry-after", "5")]).await;
    }
    let accept = derive_accept_key(key.trim_ascii());
    let key_id = identity.key_id.clone();
    // Boxed: a session task's future holds it across awaits (here and until the session
    // starts), and inline it would grow every session task by its size.
    let mut driver = Box::new(Driver::new(
        shard.clone(),
        identity,
        forwarded(&head),
        RequestType::Ws,
    ));
    let turn_state = if shard.config.server.echo_turn_state {
        // Boxed: rare (a knob), and a lease is a large future.
        Box::pin(driver.lease_ahead()).await
    } else {
        None
    };
    let response = switching_protocols(&accept, turn_state.as_ref());
    if stream.write_all(&response).await.is_err() || stream.flush().await.is_err() {
        driver.release();
        shard.close_session(&key_id);
        return Routed::Done;
    }
    Routed::Upgrade(driver)
}

/// The 101 answering a WebSocket upgrade, with upstream's `x-codex-turn-state` when the
/// session's connection was leased ahead and its handshake carried one.
fn switching_protocols(accept: &str, turn_state: Option<&HeaderValue>) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n"
    )
    .into_bytes();
    if let Some(value) = turn_state {
        response.extend_from_slice(TURN_STATE.as_bytes());
        response.extend_from_slice(b": ");
        response.extend_from_slice(value.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    response
}

/// Counts, logs and answers a refused request; the connection then ends.
async fn refuse_request(
    shard: &Shard,
    stream: &mut ClientStream,
    refusal: http1::Refusal,
) -> Routed {
    bump(&shard.counters.bad_requests);
    http_head::note_refusal(&shard.counters, refusal.label(), stream.peer_addr().ok());
    if http_head::write_error(stream, &refusal.to_error(), &[], false)
        .await
        .is_ok()
    {
        http_head::linger_close(stream).await;
    }
    Routed::Done
}

/// Answers with an error and ends the connection.
async fn refuse(stream: &mut ClientStream, err: &GatewayError, headers: &[(&str, &str)]) -> Routed {
    let _ = http_head::write_error(stream, err, headers, false).await;
    Routed::Done
}

async fn run_session(shard: Rc<Shard>, ws: ClientWs, driver: Box<Driver>, tls: bool) {
    bump(&shard.counters.sessions);
    let key_id = driver.identity().key_id.clone();
    // Unboxed in a block of its own, so that the box is freed now, not when the session ends.
    let driver = {
        let boxed = driver;
        *boxed
    };
    Session::new(shard.clone(), ws, driver, tls).run().await;
    shard.close_session(&key_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http1::parse_request;

    #[test]
    fn forwarded_headers_are_the_metadata_ones_in_order_with_their_values() {
        let raw = b"POST /v1/responses HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-x\r\n\
                    Session-Id: s1\r\nUser-Agent: codex/1\r\nX-Codex-Turn-Metadata: {\"t\":7}\r\n\
                    conversation_id: c1\r\nx-api-key: sk-y\r\n\
                    originator: codex_cli_rs\r\nthread-id: \r\n\r\n";
        let Ok(Some((head, _))) = parse_request(raw) else {
            panic!("a whole valid head");
        };
        let got: Vec<(String, Vec<u8>)> = forwarded(&head)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let want: Vec<(String, Vec<u8>)> = [
            ("session-id", &b"s1"[..]),
            ("user-agent", b"codex/1"),
            ("x-codex-turn-metadata", br#"{"t":7}"#),
            ("conversation_id", b"c1"),
            ("originator", b"codex_cli_rs"),
            ("thread-id", b""),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
        assert_eq!(got, want);
        assert!(forwarded(
            &parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap()
                .unwrap()
                .0
        )
        .is_empty());
    }

    #[test]
    fn every_forwarded_name_is_a_valid_static_header_name() {
        for name in FORWARDED {
            assert_eq!(
                forwarded_name(name).map(|n| n.to_string()),
                Some(name.to_string())
            );
        }
        assert_eq!(forwarded_name("authorization"), None);
    }
}
