//! The recovery matrix for chain errors, as pure decisions.
//!
//! When upstream answers a turn with `previous_response_not_found` or `tool_output_not_found`,
//! the session asks [`decide`] what to do, acts on it (a replay goes through
//! `normalizer::rewrite` with the matching `PreviousId`), and records the attempt in
//! [`Attempts`] so each recovery happens at most once per turn. Only chain errors before anything
//! reached the client come here (`shard/failure/` decides that). Rows:
//!
//! | error | condition | decision |
//! |---|---|---|
//! | `previous_response_not_found` | session's last response known, different from the id sent, not yet aligned, and (no tool output, or the last response's pending calls cover them) | align to it |
//! | `previous_response_not_found` | otherwise | pass to client (clients resend full context) |
//! | `tool_output_not_found` | an id was sent, not yet replayed, and every tool output's call is in the frame | replay without the id |
//! | `tool_output_not_found` | otherwise (a tool output would lose the id it belongs to) | pass to client |

use crate::protocol::ClientFrame;

use super::failure::ChainError;
use super::normalizer::{outputs_answered, Pending};

/// What to do about an upstream chain error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Resend the turn with `previous_response_id` set to this id (the session's last response).
    AlignTo(String),
    /// Resend the turn with `previous_response_id` cleared.
    ReplayWithoutPrevious,
    /// Relay the error to the client as an `error` event.
    PassToClient(PassReason),
}

/// Why an error goes to the client unrecovered; each is a counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// The one recovery this error allows was already tried this turn.
    AlreadyTried,
    /// No session last response is known, or it is the id that was just refused.
    NoOtherResponse,
    /// The frame's tool outputs would lose the response that holds their calls.
    OutputsNeedTheirId,
    /// No `previous_response_id` was sent, so there is nothing to drop.
    NoPreviousId,
}

impl Recovery {
    /// Counter label (family `recovery`).
    pub fn label(&self) -> &'static str {
        match self {
            Recovery::AlignTo(_) => "align_to_last",
            Recovery::ReplayWithoutPrevious => "replay_without_previous",
            Recovery::PassToClient(r) => match r {
                PassReason::AlreadyTried => "pass_already_tried",
                PassReason::NoOtherResponse => "pass_no_other_response",
                PassReason::OutputsNeedTheirId => "pass_outputs_need_their_id",
                PassReason::NoPreviousId => "pass_no_previous_id",
            },
        }
    }
}

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryFacts<'a> {
    /// Which chain error upstream answered with.
    pub reason: ChainError,
    /// The frame as the client sent it (its tool outputs and calls).
    pub frame: &'a ClientFrame<'a>,
    /// The `previous_response_id` that was actually sent upstream (after the normalizer).
    pub sent_previous: Option<&'a str>,
    /// The session's last response id, if known.
    pub session_last: Option<&'a str>,
    /// Pending calls of `session_last`.
    pub pending_of_last: Pending<'a>,
}

/// The recoveries already tried in this turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// An alignment to the session's last response was sent.
    pub aligned: bool,
    /// A replay without `previous_response_id` was sent.
    pub replayed_without_previous: bool,
}

impl Attempts {
    /// Notes that `recovery` is being acted on.
    pub fn record(&mut self, recovery: &Recovery) {
        match recovery {
            Recovery::AlignTo(_) => self.aligned = true,
            Recovery::ReplayWithoutPrevious => self.replayed_without_previous = true,
            Recovery::PassToClient(_) => {}
        }
    }
}

/// Decides what to do about an upstream chain error on a turn.
pub fn decide(facts: &RecoveryFacts<'_>, attempts: &Attempts) -> Recovery {
    use PassReason::*;
    let pass = Recovery::PassToClient;
    match facts.reason {
        ChainError::PreviousResponseNotFound => {
            if attempts.aligned {
                return pass(AlreadyTried);
            }
            let Some(last) = facts
                .session_last
                .filter(|l| Some(*l) != facts.sent_previous)
            else {
                return pass(NoOtherResponse);
            };
            let pending_of_last = match facts.pending_of_last {
                Pending::Known(ids) => ids,
                Pending::Unknown => &[],
            };
            if outputs_answered(facts.frame, pending_of_last) {
                Recovery::AlignTo(last.to_string())
            } else {
                pass(OutputsNeedTheirId)
            }
        }
        ChainError::ToolOutputNotFound => {
            if attempts.replayed_without_previous {
                return pass(AlreadyTried);
            }
            if facts.sent_previous.is_none() {
                return pass(NoPreviousId);
            }
            if outputs_answered(facts.frame, &[]) {
                Recovery::ReplayWithoutPrevious
            } else {
                pass(OutputsNeedTheirId)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &[u8] =
        br#"{"type":"response.create","store":false,"previous_response_id":"r1","input":"hi"}"#;
    const OUTPUT: &[u8] = br#"{"type":"response.create","store":false,"previous_response_id":"r1","input":[{"type":"function_call_output","call_id":"c1"}]}"#;
    const OWN_CALL: &[u8] = br#"{"type":"response.create","previous_response_id":"r1","input":[{"type":"function_call","call_id":"c1"},{"type":"function_call_output","call_id":"c1"}]}"#;

    fn facts<'a>(
        reason: ChainError,
        frame: &'a ClientFrame<'a>,
        last: Option<&'a str>,
        pending_of_last: Pending<'a>,
    ) -> RecoveryFacts<'a> {
        RecoveryFacts {
            reason,
            frame,
            sent_previous: frame.previous_response_id.as_deref(),
            session_last: last,
            pending_of_last,
        }
    }

    #[test]
    fn previous_not_found_aligns_once_to_a_different_last_response() {
        let f = ClientFrame::parse(PLAIN).unwrap();
        let facts = facts(
            ChainError::PreviousResponseNotFound,
            &f,
            Some("r2"),
            Pending::Unknown,
        );
        let mut attempts = Attempts::default();
        let r = decide(&facts, &attempts);
        assert_eq!(r, Recovery::AlignTo("r2".into()));
        attempts.record(&r);
        assert_eq!(
            decide(&facts, &attempts),
            Recovery::PassToClient(PassReason::AlreadyTried)
        );
    }

    #[test]
    fn previous_not_found_without_another_response_goes_to_the_client() {
        let f = ClientFrame::parse(PLAIN).unwrap();
        for last in [None, Some("r1")] {
            let facts = facts(
                ChainError::PreviousResponseNotFound,
                &f,
                last,
                Pending::Unknown,
            );
            assert_eq!(
                decide(&facts, &Attempts::default()),
                Recovery::PassToClient(PassReason::NoOtherResponse)
            );
        }
    }

    #[test]
    fn previous_not_found_with_outputs_aligns_only_where_their_calls_are() {
        let f = ClientFrame::parse(OUTPUT).unwrap();
        let theirs = vec!["c1".to_string()];
        let others = vec!["c9".to_string()];
        let at = |p| {
            decide(
                &facts(ChainError::PreviousResponseNotFound, &f, Some("r2"), p),
                &Attempts::default(),
            )
        };
        assert_eq!(at(Pending::Known(&theirs)), Recovery::AlignTo("r2".into()));
        assert_eq!(
            at(Pending::Known(&others)),
            Recovery::PassToClient(PassReason::OutputsNeedTheirId)
        );
        assert_eq!(
            at(Pending::Unknown),
            Recovery::PassToClient(PassReason::OutputsNeedTheirId)
        );
    }

    #[test]
    fn tool_output_not_found_replays_once_only_when_calls_travel_with_outputs() {
        let own = ClientFrame::parse(OWN_CALL).unwrap();
        let facts_own = facts(
            ChainError::ToolOutputNotFound,
            &own,
            Some("r2"),
            Pending::Unknown,
        );
        let mut attempts = Attempts::default();
        let r = decide(&facts_own, &attempts);
        assert_eq!(r, Recovery::ReplayWithoutPrevious);
        attempts.record(&r);
        assert_eq!(
            decide(&facts_own, &attempts),
            Recovery::PassToClient(PassReason::AlreadyTried)
        );

        let orphan = ClientFrame::parse(OUTPUT).unwrap();
        let facts_orphan = facts(
            ChainError::ToolOutputNotFound,
            &orphan,
            Some("r2"),
            Pending::Unknown,
        );
        assert_eq!(
            decide(&facts_orphan, &Attempts::default()),
            Recovery::PassToClient(PassReason::OutputsNeedTheirId)
        );
    }

    #[test]
    fn tool_output_not_found_without_an_id_sent_has_nothing_to_drop() {
        let f = ClientFrame::parse(OWN_CALL).unwrap();
        let mut facts = facts(ChainError::ToolOutputNotFound, &f, None, Pending::Unknown);
        facts.sent_previous = None;
        assert_eq!(
            decide(&facts, &Attempts::default()),
            Recovery::PassToClient(PassReason::NoPreviousId)
        );
    }

    #[test]
    fn labels_are_distinct() {
        let all = [
            Recovery::AlignTo("x".into()),
            Recovery::ReplayWithoutPrevious,
            Recovery::PassToClient(PassReason::AlreadyTried),
            Recovery::PassToClient(PassReason::NoOtherResponse),
            Recovery::PassToClient(PassReason::OutputsNeedTheirId),
            Recovery::PassToClient(PassReason::NoPreviousId),
        ];
        let mut labels: Vec<_> = all.iter().map(Recovery::label).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }
}
