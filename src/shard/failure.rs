//! The failure table: every upstream failure a turn can meet, what it is ([`FailureClass`]),
//! what the client would be told ([`Failure`]), and what the turn does next ([`decide`]).
//!
//! This is the only place a failure is classified and decided. Transports report a [`Failure`]
//! built by the constructors here (dial and acquire errors, WebSocket closes and read errors,
//! HTTP exchange errors and error answers, `error` events, silence); the driver
//! (`shard/turn`) gathers the [`AttemptFacts`] and acts on the [`Action`], one match.
//!
//! | row (docs/design.md failure matrix) | class | [`decide`] | unit test | end-to-end test (`tests/failure_matrix.rs` unless named) |
//! |---|---|---|---|---|
//! | dial / TLS / read timeout, reset, 5xx, 429 before any event | retryable | back off (full jitter), another healthy account, bounded attempts, breaker failure | `retryable_backs_off_until_the_budget_is_spent` | `burst_of_5xx_retries_with_backoff_on_the_other_account`, `all_accounts_failing_gives_one_clear_error_bounded_attempts_and_open_breakers`, `upstream_down_gives_error_event_not_a_hang`, `stalled_upstream_times_out_with_error_event` |
//! | 429 with `retry-after` | retryable | waited out (at most [`MAX_RETRY_AFTER`]) only when no other healthy account exists | `retry_after_binds_only_the_account_that_said_it` | `rate_limit_retry_after_is_honoured`, `rate_limited_account_is_left_for_another_without_waiting_out_its_retry_after` |
//! | retryable `error` event before any event | retryable | as above | `retryable_backs_off_until_the_budget_is_spent` | `retryable_error_event_before_any_output_is_retried_on_a_fresh_connection` |
//! | failure on a reused connection before any event (Pingora rule) | retryable or restart | once, at once, on a fresh connection, breaker untouched | `a_reused_connection_gets_one_fresh_retry` | `stale_pooled_connection_is_retried_once_on_a_fresh_one` |
//! | close 1012 / 1013 before any event | restart | reused connection: one fresh retry; else reported (no other account: upstream said restart) | `restart_close_is_retried_fresh_only_on_a_reused_connection` | `restart_close_on_a_reused_idle_connection_is_retried_on_a_fresh_one`, `restart_close_on_a_fresh_connection_is_reported_not_retried` |
//! | close 1012 / 1013 mid-response | final | reported; next turn on a fresh connection | `nothing_is_retried_once_the_client_saw_an_event` | `restart_close_mid_turn_gives_an_error_event_and_the_next_turn_works`, `restart_close_mid_session_gives_error_then_fresh_connection` |
//! | close 1008, WS upgrade refused (403/404/426) | fallback | HTTP at once, once per request; a refused upgrade marks the account WS-refused for a cooldown | `fallback_goes_to_http_once` | `close_1008_means_one_websocket_attempt_then_http_at_once`, `refused_upgrade_falls_back_to_http_and_later_turns_skip_the_upgrade` |
//! | `previous_response_not_found`, `tool_output_not_found` before any event | chain | the recovery matrix (`shard/recovery.rs`), breaker success | `chain_errors_go_to_recovery` | `tests/affinity.rs`: `previous_response_not_found_is_aligned_once_to_the_sessions_last_response`, `previous_response_not_found_for_the_last_response_itself_goes_to_the_client`, `tool_output_not_found_is_replayed_without_the_id_only_when_the_calls_travel_along` |
//! | anything after the client saw an event | final | reported, breaker failure | `nothing_is_retried_once_the_client_saw_an_event` | `failure_after_the_first_event_is_not_retried` |
//! | request error (4xx), busy pool, oversize message | final | reported, breaker untouched | `request_errors_are_reported_without_touching_the_breaker` | `oversize_upstream_message_gives_error_event_and_next_turn_works`, `a_half_open_probe_that_ends_in_a_request_error_does_not_wedge_the_breaker` |
//!
//! Rows that are not failures of an attempt are decided where they happen: an `error` event
//! relayed to the client drops its connection (`Outcome::UpstreamErrorEvent`,
//! `upstream_error_event_is_relayed_and_connection_not_reused`); a client that leaves or
//! preempts its turn (`client_disconnect_mid_turn_releases_upstream_connection`,
//! `new_create_mid_turn_preempts`); connection age (`attempt_ws` retires old connections); the
//! injected `previous_response_id` (`shard/normalizer.rs`).

use std::time::Duration;

use sonic_rs::JsonValueTrait;

use crate::protocol::error_body::{ErrorType, GatewayError};
use crate::protocol::upstream_event::{ErrorReason, UpstreamError};

use super::http_upstream::HttpUpError;
use super::pool::AcquireError;
use super::sink::TurnError;
use super::upstream::DialError;

/// The longest `retry-after` the gateway waits out itself; longer ones end the request.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// An upstream refusal of the turn's chain, which the recovery matrix may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// The chained response is not on this connection (or anywhere).
    PreviousResponseNotFound,
    /// A tool output names a call upstream does not know.
    ToolOutputNotFound,
}

impl ChainError {
    /// The chain error an upstream error reason stands for, if it is one.
    pub fn of_reason(reason: ErrorReason) -> Option<Self> {
        match reason {
            ErrorReason::PreviousResponseNotFound => Some(ChainError::PreviousResponseNotFound),
            ErrorReason::ToolOutputNotFound => Some(ChainError::ToolOutputNotFound),
            _ => None,
        }
    }

    /// Label for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainError::PreviousResponseNotFound => "previous_response_not_found",
            ChainError::ToolOutputNotFound => "tool_output_not_found",
        }
    }
}

/// What kind of failure an attempt met, before the facts of the attempt are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Try again (after a backoff), on another healthy account when one exists.
    Retryable {
        /// Label for `retries{reason}`.
        reason: &'static str,
        /// Upstream's `retry-after`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// WebSocket is refused for this request: go over HTTP at once.
    Fallback {
        /// Label for `fallbacks{reason}`.
        reason: &'static str,
    },
    /// Upstream refused the turn's chain: the recovery matrix decides.
    Chain {
        /// Which chain error.
        reason: ChainError,
    },
    /// Upstream closed with 1012/1013 (restart, try later): a connection failure, not a reason to
    /// try another account.
    Restart,
    /// Report to the client; never retried.
    Final,
}

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

/// A failed attempt: what the client would be told and what kind of failure it was.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The error for the client.
    pub error: TurnError,
    /// Retry, fall back, recover or report.
    pub class: FailureClass,
    /// The WebSocket close code, when upstream closed.
    pub close_code: Option<u16>,
}

impl Failure {
    /// A failure of `class` reported as `error`.
    pub fn new(error: impl Into<TurnError>, class: FailureClass) -> Self {
        Failure {
            error: error.into(),
            class,
            close_code: None,
        }
    }

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

/// What the decision knows about the attempt and the request so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptFacts {
    /// Events of this attempt reached the client.
    pub relayed: bool,
    /// The connection had carried earlier requests.
    pub reused: bool,
    /// The request already had its one retry on a fresh connection.
    pub stale_used: bool,
    /// The request already fell back to HTTP.
    pub fallback_used: bool,
    /// Retries (after a backoff) the request already made.
    pub retries: u32,
    /// The most attempts a request may make (`retry.max_attempts`).
    pub max_attempts: u32,
    /// Another healthy account of the group exists besides those already tried and this one.
    pub elsewhere: bool,
}

/// What a failure does to the account's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEffect {
    /// Upstream answered: the account is healthy.
    Success,
    /// Counts against the account.
    Failure,
    /// Says nothing about the account (a half-open probe slot is given back).
    Abandon,
}

/// What the turn does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again at once on a freshly dialed connection of the same account (counted as
    /// `stale_retries`).
    RetryFresh,
    /// Go over HTTP at once (counted as `fallbacks{reason}`).
    FallBack {
        /// Label for `fallbacks{reason}`.
        reason: &'static str,
        /// The WebSocket upgrade was refused: the account goes over HTTP for a cooldown.
        refused_upgrade: bool,
    },
    /// Wait a jittered backoff (at least `retry_after`), then try again, another account first.
    BackOff {
        /// Label for `retries{reason}`.
        reason: &'static str,
        /// The floor of the wait.
        retry_after: Option<Duration>,
    },
    /// The recovery matrix decides (`shard/recovery.rs`).
    Recover {
        /// Which chain error.
        reason: ChainError,
    },
    /// Tell the client; the request is over.
    Report {
        /// A retryable failure ran out of attempts (or its `retry-after` is too long).
        exhausted: bool,
        /// What it does to the breaker.
        breaker: BreakerEffect,
    },
}

impl Action {
    /// What the action does to the account's breaker.
    pub fn breaker(&self) -> BreakerEffect {
        match self {
            Action::RetryFresh | Action::FallBack { .. } => BreakerEffect::Abandon,
            Action::BackOff { .. } => BreakerEffect::Failure,
            Action::Recover { .. } => BreakerEffect::Success,
            Action::Report { breaker, .. } => *breaker,
        }
    }
}

/// Decides what a failed attempt leads to. Pure: the table's rows, in order.
pub fn decide(failure: &Failure, facts: &AttemptFacts) -> Action {
    // Nothing is retried, fallen back or recovered once the client saw an event.
    let class = if facts.relayed {
        FailureClass::Final
    } else {
        failure.class
    };
    // A connection failure on a reused connection says more about the connection than the
    // request (an idle pooled connection closed by an upstream restart): once, fresh, at once.
    let connection_failure = matches!(
        class,
        FailureClass::Retryable { .. } | FailureClass::Restart
    );
    if connection_failure && facts.reused && !facts.stale_used {
        return Action::RetryFresh;
    }
    match class {
        FailureClass::Fallback { reason } if !facts.fallback_used => Action::FallBack {
            reason,
            refused_upgrade: reason == "upgrade_refused",
        },
        FailureClass::Chain { reason } => Action::Recover { reason },
        FailureClass::Retryable {
            reason,
            retry_after,
        } => {
            // `retry-after` binds the account that said it: another healthy account is tried
            // after the plain backoff.
            let retry_after = retry_after.filter(|_| !facts.elsewhere);
            let too_long = retry_after.is_some_and(|ra| ra > MAX_RETRY_AFTER);
            if facts.retries + 1 >= facts.max_attempts || too_long {
                Action::Report {
                    exhausted: true,
                    breaker: BreakerEffect::Failure,
                }
            } else {
                Action::BackOff {
                    reason,
                    retry_after,
                }
            }
        }
        _ => Action::Report {
            exhausted: false,
            // A request error, a busy slice or a restart says nothing about the account's
            // health; a failure after events did.
            breaker: if facts.relayed {
                BreakerEffect::Failure
            } else {
                BreakerEffect::Abandon
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> AttemptFacts {
        AttemptFacts {
            max_attempts: 3,
            ..AttemptFacts::default()
        }
    }

    fn of(class: FailureClass) -> Failure {
        Failure::new(upstream_failed("x"), class)
    }

    const REPORT: Action = Action::Report {
        exhausted: false,
        breaker: BreakerEffect::Abandon,
    };

    #[test]
    fn retryable_backs_off_until_the_budget_is_spent() {
        for reason in ["5xx", "429", "reset", "timeout", "dial_timeout", "tls"] {
            let f = of(FailureClass::retryable(reason));
            let back_off = Action::BackOff {
                reason,
                retry_after: None,
            };
            assert_eq!(decide(&f, &facts()), back_off);
            assert_eq!(back_off.breaker(), BreakerEffect::Failure);
            let spent = AttemptFacts {
                retries: 2,
                ..facts()
            };
            assert_eq!(
                decide(&f, &spent),
                Action::Report {
                    exhausted: true,
                    breaker: BreakerEffect::Failure
                }
            );
        }
    }

    #[test]
    fn retry_after_binds_only_the_account_that_said_it() {
        let said = |secs| {
            of(FailureClass::of_status(
                429,
                Some(Duration::from_secs(secs)),
                false,
            ))
        };
        assert_eq!(
            decide(&said(1), &facts()),
            Action::BackOff {
                reason: "429",
                retry_after: Some(Duration::from_secs(1))
            }
        );
        let elsewhere = AttemptFacts {
            elsewhere: true,
            ..facts()
        };
        assert_eq!(
            decide(&said(1), &elsewhere),
            Action::BackOff {
                reason: "429",
                retry_after: None
            }
        );
        // Too long to wait out here: reported, unless another account can take it.
        assert!(matches!(
            decide(&said(60), &facts()),
            Action::Report {
                exhausted: true,
                ..
            }
        ));
        assert!(matches!(
            decide(&said(60), &elsewhere),
            Action::BackOff { .. }
        ));
    }

    #[test]
    fn a_reused_connection_gets_one_fresh_retry() {
        let reused = AttemptFacts {
            reused: true,
            ..facts()
        };
        let f = of(FailureClass::retryable("reset"));
        assert_eq!(decide(&f, &reused), Action::RetryFresh);
        assert_eq!(Action::RetryFresh.breaker(), BreakerEffect::Abandon);
        let used = AttemptFacts {
            stale_used: true,
            ..reused
        };
        assert!(matches!(decide(&f, &used), Action::BackOff { .. }));
        // Not for failures that are not about the connection.
        let refused = of(FailureClass::of_status(400, None, false));
        assert_eq!(decide(&refused, &reused), REPORT);
    }

    #[test]
    fn restart_close_is_retried_fresh_only_on_a_reused_connection() {
        let f = Failure::ws_closed(Some(1012));
        assert_eq!(f.class, FailureClass::Restart);
        assert_eq!(f.close_code, Some(1012));
        assert_eq!(f.error.code, "upstream_unavailable");
        assert_eq!(FailureClass::of_close(Some(1013)), FailureClass::Restart);
        let reused = AttemptFacts {
            reused: true,
            ..facts()
        };
        assert_eq!(decide(&f, &reused), Action::RetryFresh);
        // On a fresh connection, or after the one fresh retry: reported, never another account.
        assert_eq!(decide(&f, &facts()), REPORT);
        let used = AttemptFacts {
            stale_used: true,
            ..reused
        };
        assert_eq!(decide(&f, &used), REPORT);
    }

    #[test]
    fn fallback_goes_to_http_once() {
        let closed = Failure::ws_closed(Some(1008));
        assert_eq!(
            decide(&closed, &facts()),
            Action::FallBack {
                reason: "close_1008",
                refused_upgrade: false
            }
        );
        let refused = Failure::dial(&DialError::Refused {
            status: 426,
            retry_after: None,
        });
        let fall_back = decide(&refused, &facts());
        assert_eq!(
            fall_back,
            Action::FallBack {
                reason: "upgrade_refused",
                refused_upgrade: true
            }
        );
        assert_eq!(fall_back.breaker(), BreakerEffect::Abandon);
        let again = AttemptFacts {
            fallback_used: true,
            ..facts()
        };
        assert_eq!(decide(&closed, &again), REPORT);
    }

    #[test]
    fn chain_errors_go_to_recovery() {
        for reason in [
            ChainError::PreviousResponseNotFound,
            ChainError::ToolOutputNotFound,
        ] {
            let f = of(FailureClass::Chain { reason });
            let recover = decide(&f, &facts());
            assert_eq!(recover, Action::Recover { reason });
            assert_eq!(recover.breaker(), BreakerEffect::Success);
            // Even on a reused connection: upstream answered, the connection is fine.
            let reused = AttemptFacts {
                reused: true,
                ..facts()
            };
            assert_eq!(decide(&f, &reused), recover);
        }
    }

    #[test]
    fn nothing_is_retried_once_the_client_saw_an_event() {
        let seen = AttemptFacts {
            relayed: true,
            reused: true,
            ..facts()
        };
        let relayed_report = Action::Report {
            exhausted: false,
            breaker: BreakerEffect::Failure,
        };
        for class in [
            FailureClass::retryable("reset"),
            FailureClass::Restart,
            FailureClass::Fallback {
                reason: "close_1008",
            },
            FailureClass::Chain {
                reason: ChainError::PreviousResponseNotFound,
            },
            FailureClass::Final,
        ] {
            assert_eq!(decide(&of(class), &seen), relayed_report, "{class:?}");
        }
    }

    #[test]
    fn request_errors_are_reported_without_touching_the_breaker() {
        let busy = Failure::acquire(&AcquireError::QueueFull);
        assert_eq!(busy.error.code, "upstream_busy");
        assert_eq!(decide(&busy, &facts()), REPORT);
        let bad = Failure::http_answer(400, None, br#"{"error":{"code":"invalid_value"}}"#, &[]);
        assert_eq!(bad.class, FailureClass::Final);
        assert_eq!(decide(&bad, &facts()), REPORT);
        assert_eq!(decide(&Failure::ws_too_big(), &facts()), REPORT);
        assert_eq!(decide(&Failure::ws_closed(Some(1009)), &facts()), REPORT);
    }

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
