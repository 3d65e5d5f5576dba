//! The WebSocket canary on the data plane: which sessions may take an account's WebSocket
//! transport (`ws_canary_percent`), and what each WebSocket attempt tells the automatic
//! rollback (counted per account in the shard's [`AccountTallies`], judged on the control
//! thread by [`crate::control::rollback`]).

use std::time::Instant;

use crate::metrics::accounts::{AccountTallies, WsResult};
use crate::state::SessionKey;

use super::failure::FailureClass;
use super::relay::Outcome;

/// Multiplier spreading consecutive sessions over the 100 slots (coprime with 100, so any 100
/// consecutive sessions of a shard take every slot once, and a share of `p` % holds within one
/// session over any run of them).
const STRIDE: u64 = 37;

/// A session's place in the canary, `0..100`, fixed for the session's life: the session goes
/// over WebSocket on an account when its slot is below the account's `ws_canary_percent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanarySlot(u8);

impl CanarySlot {
    /// The slot of a client session named by its `session-id`: the same on every shard and
    /// every reconnect.
    pub fn of_session(key: &SessionKey) -> Self {
        CanarySlot((key.prefix_u64() % 100) as u8)
    }

    /// The slot of the `n`th anonymous session (no `session-id`) a shard serves.
    pub fn of_sequence(n: u64) -> Self {
        CanarySlot((n.wrapping_mul(STRIDE) % 100) as u8)
    }

    /// `true` when this session takes WebSocket on an account whose canary share is `percent`.
    pub fn takes_ws(self, percent: u8) -> bool {
        self.0 < percent
    }
}

/// Counts one attempt for the automatic rollback: attempts over WebSocket, with only the
/// outcomes that say something about it (failures of the gateway's own making, such as the
/// connection budget full or a frame it could not rewrite, and rate limits (`429`) and refused
/// credentials (`401`, an OAuth token to refresh), the same over HTTP, are left out, as are
/// preempted and abandoned attempts); of attempts over HTTP, the TTFT of answered turns, the
/// baseline the WebSocket TTFT is compared with.
pub fn record_attempt(
    tallies: &AccountTallies,
    account: usize,
    over_ws: bool,
    outcome: &Outcome,
    received: Instant,
) {
    if !over_ws {
        if let Outcome::Terminal {
            first_event_at: Some(t),
            ..
        } = outcome
        {
            tallies.record_http_ttft(account, t.saturating_duration_since(received));
        }
        return;
    }
    let result = match outcome {
        Outcome::Terminal { first_event_at, .. } => WsResult::Answered {
            ttft: first_event_at.map(|t| t.saturating_duration_since(received)),
        },
        Outcome::UpstreamErrorEvent => WsResult::Answered { ttft: None },
        // A refused credential says nothing about the transport (the same over HTTP).
        Outcome::Failed {
            relayed: false,
            failure,
        } if failure.error.status == 401 => return,
        Outcome::Failed { relayed, failure } => match (&failure.class, relayed) {
            (_, true) => WsResult::Error,
            (FailureClass::Fallback { .. }, false) => WsResult::Fallback,
            (FailureClass::Chain { .. }, false) => WsResult::Answered { ttft: None },
            (FailureClass::Retryable { reason: "429", .. }, false) => return,
            (FailureClass::Retryable { .. } | FailureClass::Restart, false) => WsResult::Error,
            (FailureClass::Final, false) if failure.close_code.is_some() => WsResult::Error,
            (FailureClass::Final, false) => return,
        },
        Outcome::Preempted { .. } | Outcome::ClientGone => return,
    };
    tallies.record_ws(account, result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_hundred_consecutive_sessions_fill_every_slot_once() {
        for start in [0u64, 17, 1_000_003] {
            let mut seen = [false; 100];
            for n in start..start + 100 {
                seen[CanarySlot::of_sequence(n).0 as usize] = true;
            }
            assert!(seen.iter().all(|s| *s), "start {start}");
        }
        let ws = (0..50)
            .filter(|n| CanarySlot::of_sequence(*n).takes_ws(30))
            .count();
        assert!((14..=16).contains(&ws), "30 % of 50 sessions: {ws}");
    }

    #[test]
    fn a_named_session_keeps_its_slot_and_the_bounds_hold() {
        let key = SessionKey::of_client("k", "session-1");
        assert_eq!(CanarySlot::of_session(&key), CanarySlot::of_session(&key));
        let slot = CanarySlot::of_session(&key);
        assert!(slot.takes_ws(100), "100 % takes every session");
        assert!(!slot.takes_ws(0), "0 % takes none");
    }
}
