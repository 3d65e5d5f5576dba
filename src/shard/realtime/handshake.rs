//! What a `GET /v1/realtime` upgrade request asks for: who the client is (an `Authorization`
//! header, `x-api-key`, or, for browsers, the `openai-insecure-api-key.<key>` subprotocol; never
//! the query string), which model, which interface (`OpenAI-Beta: realtime=v1` or the
//! `openai-beta.realtime-v1` subprotocol), and which subprotocol to answer with.

use http::{HeaderName, HeaderValue};

use crate::protocol::error_body::{ErrorType, GatewayError};

use super::super::auth::{presented_key, ClientIdentity};
use super::super::ingress::{check_client_key, forwarded, Refusal};
use super::super::Shard;
use crate::protocol::http1::RequestHead;

/// Subprotocol prefix carrying a client key (browsers cannot set headers).
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";
/// Subprotocol selecting the beta interface.
const BETA_PROTOCOL: &str = "openai-beta.realtime-v1";
/// The subprotocol a server answers realtime clients with.
const REALTIME_PROTOCOL: &str = "realtime";
/// The `OpenAI-Beta` value of the beta interface.
pub const BETA_HEADER: &str = "realtime=v1";

/// An admitted realtime upgrade request.
pub struct RealtimeRequest {
    /// The client.
    pub identity: ClientIdentity,
    /// `model=` of the query, as the client sent it.
    pub model: Option<String>,
    /// The query's other parameters, passed on upstream as they came.
    pub other_query: Vec<String>,
    /// The beta interface was asked for.
    pub beta: bool,
    /// The subprotocol to answer with, when the client offered any.
    pub subprotocol: Option<String>,
    /// Client headers passed on upstream (as for Responses; never credentials).
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Vec<u8>,
}

/// The offered subprotocols, in order.
fn offered(head: &RequestHead) -> Vec<&str> {
    head.headers
        .iter()
        .filter(|(n, _)| *n == "sec-websocket-protocol")
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Checks the request and says what it asks for; the refusal to answer with otherwise.
pub fn admit(shard: &Shard, head: &RequestHead) -> Result<RealtimeRequest, Refusal> {
    let protocols = offered(head);
    let header_key = presented_key(head.header("authorization"), head.header("x-api-key"));
    let key = header_key.or_else(|| {
        protocols
            .iter()
            .find_map(|p| p.strip_prefix(KEY_PROTOCOL))
            .map(str::as_bytes)
    });
    let identity = check_client_key(shard, head, key, None)?;
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
        return Err((err, &[("upgrade", "websocket")]));
    }
    let version_ok = head
        .header("sec-websocket-version")
        .is_some_and(|v| v.trim_ascii() == b"13");
    let Some(ws_key) = head.header("sec-websocket-key").filter(|_| version_ok) else {
        let err = GatewayError::new(
            400,
            ErrorType::InvalidRequest,
            "bad_websocket_handshake",
            "Sec-WebSocket-Key and Sec-WebSocket-Version: 13 are required",
        );
        return Err((err, &[("sec-websocket-version", "13")]));
    };
    let beta = head
        .header("openai-beta")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(BETA_HEADER.as_bytes()))
        || protocols.contains(&BETA_PROTOCOL);
    // Never echo the key protocol; prefer `realtime`, as OpenAI answers.
    let subprotocol = protocols
        .iter()
        .find(|p| **p == REALTIME_PROTOCOL)
        .or_else(|| protocols.iter().find(|p| !p.starts_with(KEY_PROTOCOL)))
        .map(|p| p.to_string());
    let mut model = None;
    let mut other_query = Vec::new();
    for kv in head.query.as_deref().unwrap_or("").split('&') {
        match kv.split_once('=') {
            Some(("model", v)) if !v.is_empty() => model = Some(v.to_string()),
            _ if kv.is_empty() => {}
            _ => other_query.push(kv.to_string()),
        }
    }
    Ok(RealtimeRequest {
        identity,
        model,
        other_query,
        beta,
        subprotocol,
        forward: forwarded(head),
        ws_key: ws_key.trim_ascii().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/v1/realtime".into(),
            query: Some("model=gpt-realtime".into()),
            http10: false,
            body: crate::protocol::http1::Framing::Length(0),
            headers: headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
        }
    }

    #[test]
    fn lists_offered_subprotocols_in_order() {
        let h = head(&[(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.sk-x,openai-beta.realtime-v1",
        )]);
        assert_eq!(
            offered(&h),
            vec![
                "realtime",
                "openai-insecure-api-key.sk-x",
                "openai-beta.realtime-v1"
            ]
        );
    }
}
