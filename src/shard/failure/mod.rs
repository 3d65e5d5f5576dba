//! The failure table: every upstream failure a turn can meet, what it is ([`FailureClass`]),
//! what the client would be told ([`Failure`]), and what the turn does next ([`decide`]).
//!
//! This module is the only place a failure is classified and decided. Transports report a
//! [`Failure`] built by the constructors in `classify.rs` (dial and acquire errors, WebSocket closes and read errors,
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
//! | 401 on a ChatGPT/Codex OAuth account before any event, first in the request | any | one token refresh asked (`shard/oauth_retry.rs`), then a fresh retry on the account or another account; breaker untouched | `a_refused_oauth_token_is_refreshed_once_before_anything_else` | `tests/oauth.rs`: `an_upstream_401_asks_one_refresh_and_the_turn_succeeds_on_the_new_token`, `a_second_401_is_reported_once_with_the_token_redacted` |
//! | request error (4xx), busy pool, oversize message | final | reported, breaker untouched | `request_errors_are_reported_without_touching_the_breaker` | `oversize_upstream_message_gives_error_event_and_next_turn_works`, `a_half_open_probe_that_ends_in_a_request_error_does_not_wedge_the_breaker` |
//!
//! Rows that are not failures of an attempt are decided where they happen: an `error` event
//! relayed to the client drops its connection (`Outcome::UpstreamErrorEvent`,
//! `upstream_error_event_is_relayed_and_connection_not_reused`); a client that leaves or
//! preempts its turn (`client_disconnect_mid_turn_releases_upstream_connection`,
//! `new_create_mid_turn_preempts`); connection age (`attempt_ws` retires old connections); the
//! injected `previous_response_id` (`shard/normalizer.rs`).

mod classify;

use std::time::Duration;

use crate::protocol::upstream_event::ErrorReason;

use super::sink::TurnError;

pub use classify::upstream_failed;

/// The error code of an upgrade upstream refused with 401 (bad or expired account credentials).
pub const UPSTREAM_UNAUTHORIZED: &str = "upstream_unauthorized";

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

    /// `true` when upstream refused the credentials (401 on the upgrade or the request).
    pub fn is_unauthorized(&self) -> bool {
        self.error.status == 401 || self.error.code == UPSTREAM_UNAUTHORIZED
    }
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
    /// The account's credential is an OAuth token that this request has not refreshed yet.
    pub token_refreshable: bool,
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
    /// Upstream refused an OAuth account's token: ask the refresher for a newer one, then retry
    /// on the same account or move to another (`shard/oauth_retry.rs`).
    RefreshToken,
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
            Action::RetryFresh | Action::FallBack { .. } | Action::RefreshToken => {
                BreakerEffect::Abandon
            }
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
    // A refused OAuth token gets one refresh before anything else is tried.
    if facts.token_refreshable && !facts.relayed && failure.is_unauthorized() {
        return Action::RefreshToken;
    }
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
    use crate::shard::pool::AcquireError;
    use crate::shard::upstream::DialError;

    #[test]
    fn a_refused_oauth_token_is_refreshed_once_before_anything_else() {
        let refused = Failure::dial(&DialError::Refused {
            status: 401,
            retry_after: None,
        });
        let oauth = AttemptFacts {
            token_refreshable: true,
            ..facts()
        };
        assert_eq!(decide(&refused, &oauth), Action::RefreshToken);
        assert_eq!(Action::RefreshToken.breaker(), BreakerEffect::Abandon);
        let spent = AttemptFacts {
            token_refreshable: false,
            ..oauth
        };
        assert_ne!(decide(&refused, &spent), Action::RefreshToken);
        let relayed = AttemptFacts {
            relayed: true,
            ..oauth
        };
        assert_ne!(decide(&refused, &relayed), Action::RefreshToken);
        let other = of(FailureClass::retryable("connect"));
        assert_ne!(decide(&other, &oauth), Action::RefreshToken);
    }

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
}
