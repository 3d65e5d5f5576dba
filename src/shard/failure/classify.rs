//! Every failure a transport can meet, as a [`Failure`] of its [`FailureClass`]: dial and acquire
//! errors, WebSocket closes and read errors, HTTP exchange errors and error answers, `error`
//! events, silence. What follows from each is decided in [`super::decide`].

use std::time::Duration;

use sonic_rs::JsonValueTrait;

use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::upstream_event::{ErrorReason, UpstreamError};

use super::super::http_upstream::HttpUpError;
use super::super::pool::AcquireError;
use super::super::sink::TurnError;
use super::super::upstream::DialError;
use super::{ChainError, Failure, FailureClass};

impl FailureClass {
    /// A retryable failure without `retry-after`.
    pub fn retryable(reason: &'static str) -> Self {
        FailureClass::Retryable {
            reason,
            retry_after: None,
        }
    }

    /// The class of an HTTP status answered by upstream (a refused upgrade or a POST).
    pub fn of_status(status: u16, retry_after: Option<Duration>, upgrade: bool) -> Self {
        match status {
            429 => FailureClass::Retryable {
                reason: "429",
                retry_after,
            },
            500..=599 => FailureClass::Retryable {
                reason: "5xx",
                retry_after,
            },
            _ if upgrade => FailureClass::Fallback {
                reason: "upgrade_refused",
            },
            _ => FailureClass::Final,
        }
    }

    /// The class of a WebSocket close code received from upstream.
    pub fn of_close(code: Option<u16>) -> Self {
        match code {
            Some(1008) => FailureClass::Fallback {
                reason: "close_1008",
            },
            Some(1012 | 1013) => FailureClass::Restart,
            Some(1009) => FailureClass::Final,
            _ => FailureClass::retryable("reset"),
        }
    }

    /// The class of an upstream `error` event read before any event reached the client; `None`
    /// for errors that are relayed as they are.
    pub fn of_error_event(reason: ErrorReason) -> Option<Self> {
        match reason {
            ErrorReason::RateLimited => Some(FailureClass::retryable("429")),
            ErrorReason::ServerError => Some(FailureClass::retryable("5xx")),
            _ => ChainError::of_reason(reason).map(|reason| FailureClass::Chain { reason }),
        }
    }
}

impl Failure {
    /// Upstream closed its WebSocket with `code` (or without a close frame).
    pub fn ws_closed(code: Option<u16>) -> Self {
        Failure {
            close_code: code,
            ..Failure::new(upstream_closed(code), FailureClass::of_close(code))
        }
    }

    /// The upstream connection was reset without a close.
    pub fn reset() -> Self {
        Failure::new(upstream_closed(None), FailureClass::retryable("reset"))
    }

    /// The upstream connection failed mid-response.
    pub fn broken() -> Self {
        Failure::new(
            upstream_failed("upstream connection failed mid-response"),
            FailureClass::retryable("reset"),
        )
    }

    /// A client frame meant for the response in flight could not be sent upstream: the client
    /// saw events, nothing is retried.
    pub fn broken_mid_turn() -> Self {
        Failure::new(
            upstream_failed("upstream connection failed mid-response"),
            FailureClass::Final,
        )
    }

    /// Upstream sent a WebSocket message over the size limit.
    pub fn ws_too_big() -> Self {
        Failure::new(
            GatewayError::new(
                502,
                ErrorType::Server,
                "upstream_message_too_big",
                "upstream sent a message over the size limit",
            ),
            FailureClass::Final,
        )
    }

    /// Upstream broke the WebSocket protocol (or sent text that is not UTF-8).
    pub fn ws_protocol() -> Self {
        let err = GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_protocol_error",
            "upstream broke the WebSocket protocol",
        );
        Failure::new(err, FailureClass::retryable("protocol_error"))
    }

    /// The turn's frame could not be sent upstream in time (`timed_out`) or at all.
    pub fn send_failed(timed_out: bool) -> Self {
        let reason = if timed_out { "timeout" } else { "reset" };
        Failure::new(
            upstream_failed("upstream connection failed"),
            FailureClass::retryable(reason),
        )
    }

    /// Upstream sent nothing for `limit` inside a turn.
    pub fn silent(limit: Duration) -> Self {
        Failure::new(
            GatewayError::new(
                504,
                ErrorType::Server,
                "upstream_timeout",
                format!("upstream sent nothing for {} s", limit.as_secs()),
            ),
            FailureClass::retryable("timeout"),
        )
    }

    /// An SSE event upstream sent is not UTF-8.
    pub fn event_not_utf8() -> Self {
        Failure::new(
            upstream_failed("upstream sent an event that is not UTF-8"),
            FailureClass::Final,
        )
    }

    /// An HTTP response ended before its terminal event.
    pub fn ended_early() -> Self {
        Failure::new(
            upstream_failed("upstream ended the response before a terminal event"),
            FailureClass::retryable("reset"),
        )
    }

    /// An `error` event of `class` read before any event reached the client, passed on as
    /// upstream sent it (`event`, less the account's `secrets`, as `status`).
    pub fn error_event(class: FailureClass, status: u16, event: &str, secrets: &[&str]) -> Self {
        let error = TurnError::from_upstream(status, event.as_bytes(), secrets);
        let error = TurnError {
            event: event.to_string(),
            ..error
        };
        Failure {
            error,
            class,
            close_code: None,
        }
    }

    /// A dial error (TCP, TLS, WebSocket upgrade).
    pub fn dial(e: &DialError) -> Self {
        match e {
            DialError::Refused {
                status,
                retry_after,
            } => {
                let retry_after = retry_after.map(Duration::from_secs);
                let class = FailureClass::of_status(*status, retry_after, true);
                let err = if *status == 429 {
                    GatewayError::new(
                        429,
                        ErrorType::RateLimit,
                        "upstream_rate_limited",
                        "upstream is rate limiting this account; retry later",
                    )
                } else if *status == 401 {
                    GatewayError::new(
                        502,
                        ErrorType::Server,
                        super::UPSTREAM_UNAUTHORIZED,
                        "upstream refused the account's credentials (HTTP 401)",
                    )
                } else {
                    GatewayError::new(
                        502,
                        ErrorType::Server,
                        "upstream_unavailable",
                        format!("upstream refused the connection (HTTP {status})"),
                    )
                };
                Failure::new(err, class)
            }
            DialError::ConnectTimeout | DialError::HandshakeTimeout => Failure::new(
                GatewayError::new(
                    504,
                    ErrorType::Server,
                    "upstream_timeout",
                    "upstream did not answer in time",
                ),
                FailureClass::retryable("dial_timeout"),
            ),
            DialError::Proxy(_) => Failure::new(
                GatewayError::new(
                    502,
                    ErrorType::Server,
                    "upstream_unavailable",
                    "the account's egress proxy did not open a tunnel",
                ),
                FailureClass::retryable("proxy"),
            ),
            DialError::Tls(_) => Failure::new(
                GatewayError::new(
                    502,
                    ErrorType::Server,
                    "upstream_unavailable",
                    "upstream TLS handshake failed",
                ),
                FailureClass::retryable("tls"),
            ),
            _ => Failure::new(
                GatewayError::new(
                    502,
                    ErrorType::Server,
                    "upstream_unavailable",
                    "upstream could not be reached",
                ),
                FailureClass::retryable("connect"),
            ),
        }
    }

    /// A pooled WebSocket could not be had: a dial error, or the account's slice is busy.
    pub fn acquire(e: &AcquireError) -> Self {
        match e {
            AcquireError::Dial(d) => Failure::dial(d),
            AcquireError::QueueFull | AcquireError::Timeout => Failure::new(
                GatewayError::new(
                    503,
                    ErrorType::Server,
                    "upstream_busy",
                    "all upstream connections are busy; retry later",
                ),
                FailureClass::Final,
            ),
        }
    }

    /// An HTTP exchange error.
    pub fn http(e: &HttpUpError) -> Self {
        match e {
            HttpUpError::Dial(d) => Failure::dial(d),
            HttpUpError::Timeout => Failure::new(
                GatewayError::new(
                    504,
                    ErrorType::Server,
                    "upstream_timeout",
                    "upstream sent nothing in time",
                ),
                FailureClass::retryable("timeout"),
            ),
            HttpUpError::TooLarge(_) => Failure::new(
                GatewayError::new(
                    502,
                    ErrorType::Server,
                    "upstream_message_too_big",
                    "upstream sent an event over the size limit",
                ),
                FailureClass::Final,
            ),
            HttpUpError::Malformed(_) => Failure::new(
                upstream_failed("upstream sent a malformed HTTP response"),
                FailureClass::retryable("malformed"),
            ),
            HttpUpError::Io(_) | HttpUpError::Eof => Failure::new(
                upstream_failed("upstream closed the connection mid-response"),
                FailureClass::retryable("reset"),
            ),
        }
    }

    /// An HTTP answer that is not an event stream: an error status with its `body`, or a 200
    /// without SSE.
    pub fn http_answer(
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
        secrets: &[&str],
    ) -> Self {
        if status == 200 {
            return Failure::new(
                upstream_failed("upstream answered without an event stream"),
                FailureClass::retryable("malformed"),
            );
        }
        let class = chain_error(status, body)
            .map(|reason| FailureClass::Chain { reason })
            .unwrap_or_else(|| FailureClass::of_status(status, retry_after, false));
        Failure::new(TurnError::from_upstream(status, body, secrets), class)
    }

    /// An internal failure before anything was sent (no connection, a bad rewrite, a body that
    /// is not a JSON object).
    pub fn local(error: GatewayError) -> Self {
        Failure::new(error, FailureClass::Final)
    }
}

/// A generic upstream failure.
pub fn upstream_failed(message: &str) -> GatewayError {
    GatewayError::new(502, ErrorType::Server, "upstream_error", message)
}

fn upstream_closed(code: Option<u16>) -> GatewayError {
    match code {
        Some(1009) => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_message_too_big",
            "upstream closed the connection: message too big (1009)",
        ),
        Some(code @ (1012 | 1013)) => GatewayError::new(
            503,
            ErrorType::Server,
            "upstream_unavailable",
            format!("upstream is restarting or overloaded (close {code}); retry the request"),
        ),
        Some(code) => GatewayError::new(
            502,
            ErrorType::Server,
            "upstream_closed",
            format!("upstream closed the connection mid-response (close {code})"),
        ),
        None => upstream_failed("upstream closed the connection mid-response"),
    }
}

/// The chain error an HTTP error answer carries.
fn chain_error(status: u16, body: &[u8]) -> Option<ChainError> {
    if status != 400 {
        return None;
    }
    let field = |name: &str| {
        sonic_rs::get_from_slice(body, ["error", name])
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let error = UpstreamError {
        status: Some(status),
        error_type: field("type"),
        code: field("code"),
        message: field("message"),
    };
    ChainError::of_reason(error.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_chain_errors_go_to_the_recovery_matrix() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id 'r1' not found."}}"#;
        assert_eq!(
            chain_error(400, body),
            Some(ChainError::PreviousResponseNotFound)
        );
        assert_eq!(
            Failure::http_answer(400, None, body, &[]).class,
            FailureClass::Chain {
                reason: ChainError::PreviousResponseNotFound
            }
        );
        let body = br#"{"error":{"type":"invalid_request_error","code":null,"message":"No tool call found for function call output with call_id c1."}}"#;
        assert_eq!(chain_error(400, body), Some(ChainError::ToolOutputNotFound));
        let other =
            br#"{"error":{"type":"invalid_request_error","code":"invalid_value","message":"bad"}}"#;
        assert_eq!(chain_error(400, other), None);
        assert_eq!(chain_error(500, body), None);
        assert_eq!(
            Failure::http_answer(200, None, b"", &[]).class,
            FailureClass::retryable("malformed")
        );
    }

    #[test]
    fn dial_failures_are_classified() {
        let refused = |status, retry_after| {
            Failure::dial(&DialError::Refused {
                status,
                retry_after,
            })
        };
        for s in [401, 403, 404, 426] {
            assert_eq!(
                refused(s, None).class,
                FailureClass::Fallback {
                    reason: "upgrade_refused"
                }
            );
        }
        assert_eq!(refused(503, None).class, FailureClass::retryable("5xx"));
        assert_eq!(
            refused(429, Some(2)).class,
            FailureClass::Retryable {
                reason: "429",
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(refused(429, None).error.status, 429);
        assert_eq!(
            Failure::dial(&DialError::ConnectTimeout).class,
            FailureClass::retryable("dial_timeout")
        );
        let refused_conn = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Failure::dial(&DialError::Connect(refused_conn)).class,
            FailureClass::retryable("connect")
        );
        let proxy = Failure::dial(&DialError::Proxy(
            crate::net::proxy::ProxyError::ConnectRefused(407),
        ));
        assert_eq!(proxy.class, FailureClass::retryable("proxy"));
        assert_eq!(proxy.error.status, 502);
    }

    #[test]
    fn status_and_close_classification() {
        for s in [401, 403, 404, 426] {
            assert_eq!(FailureClass::of_status(s, None, false), FailureClass::Final);
        }
        assert_eq!(
            FailureClass::of_close(None),
            FailureClass::retryable("reset")
        );
        assert_eq!(
            FailureClass::of_error_event(ErrorReason::ServerError),
            Some(FailureClass::retryable("5xx"))
        );
        assert_eq!(FailureClass::of_error_event(ErrorReason::Other), None);
        assert_eq!(
            FailureClass::of_error_event(ErrorReason::ConnectionLimitReached),
            None
        );
    }
}
