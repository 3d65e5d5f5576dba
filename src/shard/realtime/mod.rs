//! The Realtime API relay (`GET /v1/realtime`): a bidirectional WebSocket relay, one upstream
//! connection per client session, billed per `response.done`.
//!
//! Layout:
//! - `handshake`: what an upgrade request asks for (auth, model, interface, subprotocol).
//! - `upstream`: the session's own upstream WebSocket.
//! - `relay`: both directions at once, per-event accounting, how a session is closed.
//! - `ledger`: usage records per response, and the flush of what is left at the end.
//! - `usage_estimate`: the estimate for responses upstream reported no usage for.
//!
//! A session takes one slot of its account's connection budget on this shard for its whole
//! life (it waits in the account's queue like a pooled acquire when the budget is used up), and
//! counts against its key's session cap like a Responses session.

mod handshake;
mod ledger;
mod relay;
mod upstream;
mod usage_estimate;

pub use ledger::{Billing, Ledger, RecordSink};
pub use relay::{error_event, End, Inspector, ModelNames};

use std::rc::Rc;
use std::time::Instant;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use futures_lite::AsyncWriteExt;

use crate::metrics::Hist;
use crate::net::ClientStream;
use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::runtime;

use super::counters::bump;
use super::http_head;
use super::pool::{AcquireError, DedicatedSlot};
use super::scheduler;
use super::upstream::{count_proxy_failure, DialError};
use super::Shard;
use crate::net::PrefixedStream;
use crate::protocol::http1::RequestHead;
use handshake::RealtimeRequest;
use relay::Relay;
use upstream::{RealtimeUpstream, UpstreamAsk};

/// Labeled-counter family of how realtime sessions ended (`client_closed`, `upstream_closed`, …).
const ENDS: &str = "realtime_end";

/// Read chunk of a realtime client WebSocket: audio appends are tens of KiB.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Paths that serve the Realtime API.
pub fn is_realtime_path(path: &str) -> bool {
    matches!(path, "/v1/realtime" | "/realtime")
}

/// Counts a session of a key as open until dropped (a panic included).
struct OpenSession<'a> {
    shard: &'a Shard,
    key_id: &'a str,
}

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.shard.close_session(self.key_id);
    }
}

/// An upstream connection, with the account it came from and its budget slot.
struct Connected {
    ws: RealtimeUpstream,
    slot: DedicatedSlot,
    upstream_model: Option<String>,
}

/// Serves one realtime upgrade request on `stream` (whose bytes read past the head are in
/// `rest`) to the session's end.
pub async fn serve(shard: &Rc<Shard>, stream: &mut ClientStream, head: RequestHead, rest: Vec<u8>) {
    let req = match handshake::admit(shard, &head) {
        Ok(req) => req,
        Err((err, headers)) => {
            if err.status == 400 {
                bump(&shard.counters.bad_requests);
            }
            let _ = http_head::write_error(stream, &err, headers, false).await;
            return;
        }
    };
    drop(head);
    if !shard.try_open_session(&req.identity.key_id) {
        bump(&shard.counters.session_cap_rejections);
        let err = GatewayError::new(
            429,
            ErrorType::RateLimit,
            "too_many_sessions",
            "Too many open WebSocket connections for this key, please retry later",
        );
        let _ = http_head::write_error(stream, &err, &[("retry-after", "5")], false).await;
        return;
    }
    let key_id = req.identity.key_id.clone();
    let _open = OpenSession {
        shard,
        key_id: &key_id,
    };
    let started = Instant::now();
    let up = match connect(shard, &req).await {
        Ok(up) => up,
        Err(err) => {
            let _ = http_head::write_error(stream, &err, &[], false).await;
            return;
        }
    };
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n",
        derive_accept_key(&req.ws_key)
    );
    if let Some(p) = &req.subprotocol {
        answer.push_str("sec-websocket-protocol: ");
        answer.push_str(p);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    bump(&shard.counters.sessions);
    bump(&shard.counters.realtime_sessions);
    let limit = shard.config.server.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let client = WebSocketStream::from_raw_socket(
        PrefixedStream::new(rest, stream),
        Role::Server,
        Some(config),
    )
    .await;
    let account = up.slot.pool().account.config.id.clone();
    let client_model = req.model.clone().unwrap_or_default();
    let models = match (&req.model, &up.upstream_model) {
        (Some(client), Some(upstream)) if client != upstream => {
            Some(ModelNames::new(client, upstream))
        }
        _ => None,
    };
    let session_id = format!(
        "rt_{}_{}_{}",
        shard.id,
        runtime::unix_micros(),
        shard.counters.realtime_sessions.get()
    );
    let sink_shard = shard.clone();
    let sink: RecordSink = Box::new(move |record| {
        let estimated = record.realtime.as_ref().is_some_and(|r| r.estimated);
        bump(if estimated {
            &sink_shard.counters.realtime_usage_estimated
        } else {
            &sink_shard.counters.realtime_usage_reported
        });
        sink_shard.submit_usage(record);
    });
    let billing = Billing {
        identity: req.identity.clone(),
        account: account.clone(),
        model: client_model.clone(),
        instance: shard.config.state.instance.clone(),
        shard: shard.id,
    };
    let inspector = Inspector {
        ledger: std::cell::RefCell::new(Ledger::new(billing, session_id, sink)),
        models,
    };
    let cfg = &shard.config.server;
    let relay = Relay::new(
        shard,
        &inspector,
        cfg.client_write_timeout,
        cfg.idle_timeout,
    );
    let end = relay.run(client, up.ws).await;
    drop(up.slot);
    drop(inspector);
    shard.counters.bump_labeled(ENDS, end.label());
    shard
        .metrics
        .record(Hist::RealtimeSession, started.elapsed());
    tracing::info!(
        shard = shard.id,
        key = %key_id,
        account = %account,
        model = %client_model,
        end = end.label(),
        secs = started.elapsed().as_secs_f64(),
        "realtime session ended"
    );
}

/// Connects the session upstream: an account of the client's group (least loaded, breaker
/// closed), a slot of its budget, a dial; up to `retry_max_attempts` accounts. The error to
/// answer the upgrade with otherwise.
async fn connect(shard: &Shard, req: &RealtimeRequest) -> Result<Connected, GatewayError> {
    let mut tried = Vec::new();
    let mut last: Option<GatewayError> = None;
    let attempts = shard.config.upstream.retry.max_attempts.max(1);
    for _ in 0..attempts {
        let Some(pool) = scheduler::pick(shard, &req.identity.group, &tried) else {
            break;
        };
        tried.push(pool.account.index);
        let slot = match pool.reserve_dedicated().await {
            Ok(slot) => slot,
            Err(e) => {
                last = Some(busy(&e));
                continue;
            }
        };
        let upstream_model = req.model.as_deref().map(|m| {
            pool.account
                .config
                .model_map
                .get(m)
                .cloned()
                .unwrap_or_else(|| m.to_string())
        });
        let ask = UpstreamAsk {
            model: upstream_model.as_deref(),
            other_query: &req.other_query,
            beta: req.beta,
            forward: &req.forward,
        };
        let dial_started = Instant::now();
        match upstream::dial(&pool.account, &shard.config.upstream, &ask).await {
            Ok(ws) => {
                pool.breaker.on_success(Instant::now());
                bump(&shard.counters.pool_dials);
                shard.metrics.record(Hist::DialWs, dial_started.elapsed());
                return Ok(Connected {
                    ws,
                    slot,
                    upstream_model,
                });
            }
            Err(e) => {
                if !matches!(e, DialError::Refused { status, .. } if status < 500 && status != 429)
                    && pool.breaker.on_failure(Instant::now())
                {
                    bump(&shard.counters.breaker_opens);
                }
                count_proxy_failure(&shard.counters, &pool.account.config.id, &e);
                tracing::warn!(shard = shard.id, account = %pool.account.config.id, error = %e, "realtime upstream dial failed");
                last = Some(dial_failed(&e));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        GatewayError::new(
            503,
            ErrorType::Server,
            "no_upstream_available",
            "no upstream account is available for this key's group",
        )
    }))
}

fn busy(e: &AcquireError) -> GatewayError {
    GatewayError::new(
        429,
        ErrorType::RateLimit,
        "upstream_busy",
        format!("every upstream connection of the account is in use: {e}"),
    )
}

fn dial_failed(e: &DialError) -> GatewayError {
    match e {
        DialError::Refused { status, .. } if (400..500).contains(status) => GatewayError::new(
            *status,
            ErrorType::InvalidRequest,
            "upstream_refused",
            format!("upstream refused the realtime session with HTTP {status}"),
        ),
        _ => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_unavailable",
            format!("could not connect the realtime session upstream: {e}"),
        ),
    }
}
