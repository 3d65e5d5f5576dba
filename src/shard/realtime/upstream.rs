//! A realtime session's own upstream WebSocket: `…/realtime?model=<mapped model>` on the
//! account, with the account's key (never the client's), the client headers passed on as for
//! Responses, and `OpenAI-Beta: realtime=v1` when the client asked for the beta interface. One
//! connection per client session, never pooled (a realtime session is stateful and long-lived).

use async_tungstenite::tungstenite::handshake::client::generate_key;
use async_tungstenite::WebSocketStream;
use http::{HeaderName, HeaderValue, Request};

use crate::config::UpstreamConfig;
use crate::net::UpstreamStream;
use crate::runtime;

use super::super::account::AccountRuntime;
use super::super::upstream::{classify_handshake_error, connect_stream, ws_config, DialError};
use super::handshake::BETA_HEADER;

/// The upstream side of a realtime session.
pub type RealtimeUpstream = WebSocketStream<UpstreamStream>;

/// What the upstream connection asks for.
pub struct UpstreamAsk<'a> {
    /// The model upstream serves (mapped), if the client named one.
    pub model: Option<&'a str>,
    /// Other query parameters, as the client sent them.
    pub other_query: &'a [String],
    /// The beta interface.
    pub beta: bool,
    /// Client headers passed on.
    pub forward: &'a [(HeaderName, HeaderValue)],
}

/// The URL to dial: the account's realtime endpoint with the query.
fn url(account: &AccountRuntime, ask: &UpstreamAsk<'_>) -> String {
    let mut url = account.config.endpoint.realtime_ws_url();
    let params = ask
        .model
        .map(|m| format!("model={m}"))
        .into_iter()
        .chain(ask.other_query.iter().cloned());
    for (i, p) in params.enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&p);
    }
    url
}

/// Opens the session's upstream WebSocket (TCP, TLS, upgrade), each step under its timeout.
pub async fn dial(
    account: &AccountRuntime,
    cfg: &UpstreamConfig,
    ask: &UpstreamAsk<'_>,
) -> Result<RealtimeUpstream, DialError> {
    let stream = connect_stream(account, cfg).await?;
    let mut builder = Request::get(url(account, ask))
        .header("Host", account.config.endpoint.authority())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", generate_key())
        .header("Authorization", account.authorization());
    if ask.beta {
        builder = builder.header("OpenAI-Beta", BETA_HEADER);
    }
    for (name, value) in ask.forward.iter().chain(account.extra_headers(ask.forward)) {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(())
        .map_err(|e| DialError::Handshake(e.to_string()))?;
    let handshake = async_tungstenite::client_async_with_config(
        request,
        stream,
        Some(ws_config(cfg.max_message_bytes)),
    );
    let (ws, _response) = runtime::timeout(cfg.handshake_timeout, handshake)
        .await
        .ok_or(DialError::HandshakeTimeout)?
        .map_err(classify_handshake_error)?;
    Ok(ws)
}
