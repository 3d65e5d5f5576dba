//! The call/output pairing decision: what happens to a frame's `previous_response_id` so that a
//! tool output travels with the response that holds its call, and why (each reason a label of
//! the `normalizer` counter family). Pure decisions over what the turn knows; the splice that
//! applies one is [`super::rewrite`].

use sonic_rs::JsonValueTrait;

use crate::protocol::client_frame::TOOL_CALL_TYPES;
use crate::protocol::ClientFrame;

use super::super::counters::ShardCounters;

/// Labeled-counter family of the pairing decisions.
const FAMILY: &str = "normalizer";

/// What is known about the function calls a response left waiting for outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending<'a> {
    /// Recorded when the response completed (possibly empty: nothing pending).
    Known(&'a [String]),
    /// Never recorded, expired, or the store did not answer in time.
    Unknown,
}

/// What the pairing decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct PairingFacts<'a> {
    /// The frame's lazily read fields (previous id, `store`, tool outputs and calls).
    pub frame: &'a ClientFrame<'a>,
    /// The session's last response id, if known.
    pub session_last: Option<&'a str>,
    /// Pending calls of the frame's `previous_response_id`.
    pub pending_of_previous: Pending<'a>,
    /// Pending calls of `session_last`.
    pub pending_of_last: Pending<'a>,
}

/// What happens to `previous_response_id` on the way up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousId<'a> {
    /// Sent as the client sent it (present or absent).
    AsSent,
    /// Set to this id (injected when absent, replaced when present).
    Set(&'a str),
    /// Cleared (sent as `null`, which upstream reads as absent).
    Clear,
}

/// Why the pairing decision came out as it did; each is a counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingReason {
    /// No tool output and no previous id: nothing to decide.
    Plain,
    /// A previous id without tool outputs: kept (upstream decides; recovery handles a miss).
    NoToolOutput,
    /// Every tool output answers a call pending on the previous response: kept.
    Matched,
    /// The outputs do not answer the previous response's calls but do answer the session's
    /// last response's: the id is replaced by the last one.
    MismatchRealigned,
    /// The outputs do not answer the previous response's calls, and no better id is known:
    /// kept (a tool output is never sent without an id it may belong to).
    MismatchKept,
    /// The previous response's pending calls are unknown: kept, by policy (never drop an id a
    /// tool output may depend on).
    UnknownPendingKept,
    /// Every tool output's call is in the frame itself: nothing to inject.
    SelfContained,
    /// `store` is not false: upstream keeps responses, no injection.
    StoreEnabled,
    /// store=false, outputs without an id: the session's last response, whose pending calls
    /// match, is injected.
    InjectVerified,
    /// Same, the last response's pending calls unknown: injected by policy (it is the only
    /// response the upstream connection still holds).
    InjectUnverified,
    /// The last response's pending calls are known and do not match: nothing injected.
    InjectSkippedMismatch,
    /// store=false, outputs without an id, and no last response known: nothing to inject.
    InjectNoLast,
}

impl PairingReason {
    /// Counter label.
    pub fn as_str(self) -> &'static str {
        match self {
            PairingReason::Plain => "plain",
            PairingReason::NoToolOutput => "no_tool_output",
            PairingReason::Matched => "matched",
            PairingReason::MismatchRealigned => "mismatch_realigned",
            PairingReason::MismatchKept => "mismatch_kept",
            PairingReason::UnknownPendingKept => "unknown_pending_kept",
            PairingReason::SelfContained => "self_contained",
            PairingReason::StoreEnabled => "store_enabled",
            PairingReason::InjectVerified => "inject_verified",
            PairingReason::InjectUnverified => "inject_unverified",
            PairingReason::InjectSkippedMismatch => "inject_skipped_mismatch",
            PairingReason::InjectNoLast => "inject_no_last",
        }
    }
}

/// The pairing decision: what to do with `previous_response_id`, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing<'a> {
    /// The action.
    pub previous: PreviousId<'a>,
    /// Its reason label.
    pub reason: PairingReason,
}

/// `true` when every tool output in `frame` answers a call in `pending` or a call item in the
/// same frame: the pairing invariant's one test, for the normalizer and the recovery matrix.
pub fn outputs_answered(frame: &ClientFrame<'_>, pending: &[String]) -> bool {
    frame
        .tool_output_call_ids
        .iter()
        .all(|out| pending.iter().any(|c| c == out) || frame.tool_call_ids.iter().any(|c| c == out))
}

/// Decides the fate of `previous_response_id` from the call/output pairing invariant.
pub fn decide_pairing<'a>(facts: &PairingFacts<'a>) -> Pairing<'a> {
    let f = facts.frame;
    let decided = |previous, reason| Pairing { previous, reason };
    if f.tool_output_call_ids.is_empty() {
        let reason = match f.previous_response_id {
            Some(_) => PairingReason::NoToolOutput,
            None => PairingReason::Plain,
        };
        return decided(PreviousId::AsSent, reason);
    }
    let covered_by = |pending: Pending<'_>| match pending {
        Pending::Known(ids) => Some(outputs_answered(f, ids)),
        Pending::Unknown => None,
    };
    if covered_by(Pending::Known(&[])) == Some(true) {
        return decided(PreviousId::AsSent, PairingReason::SelfContained);
    }
    match f.previous_response_id.as_deref() {
        Some(previous) => match covered_by(facts.pending_of_previous) {
            Some(true) => decided(PreviousId::AsSent, PairingReason::Matched),
            Some(false) => match facts.session_last {
                Some(last)
                    if last != previous && covered_by(facts.pending_of_last) == Some(true) =>
                {
                    decided(PreviousId::Set(last), PairingReason::MismatchRealigned)
                }
                _ => decided(PreviousId::AsSent, PairingReason::MismatchKept),
            },
            None => decided(PreviousId::AsSent, PairingReason::UnknownPendingKept),
        },
        None if !f.is_store_disabled() => decided(PreviousId::AsSent, PairingReason::StoreEnabled),
        None => match facts.session_last {
            None => decided(PreviousId::AsSent, PairingReason::InjectNoLast),
            Some(last) => match covered_by(facts.pending_of_last) {
                Some(true) => decided(PreviousId::Set(last), PairingReason::InjectVerified),
                Some(false) => decided(PreviousId::AsSent, PairingReason::InjectSkippedMismatch),
                None => decided(PreviousId::Set(last), PairingReason::InjectUnverified),
            },
        },
    }
}

/// The `call_id`s of the tool calls a terminal event's response left waiting for outputs (its
/// `response.output` items of a tool-call type), to record with `Sticky::remember_turn` so the
/// next turn's outputs can be paired. Read once per turn, on the terminal event only.
pub fn pending_calls(terminal_event: &[u8]) -> Vec<String> {
    let Ok(output) = sonic_rs::get(terminal_event, &["response", "output"]) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for item in sonic_rs::to_array_iter(output.as_raw_str()) {
        let Ok(item) = item else {
            break;
        };
        let is_call = item
            .get("type")
            .and_then(|t| t.as_str().map(|t| TOOL_CALL_TYPES.contains(&t)))
            .unwrap_or(false);
        if let Some(id) = item
            .get("call_id")
            .filter(|_| is_call)
            .and_then(|c| c.as_str().map(str::to_owned))
        {
            ids.push(id);
        }
    }
    ids
}

/// The pairing decision of a turn, made once before its first attempt, with its reason counted
/// (`normalizer{reason}`). Each attempt then applies it (or the recovery matrix's replacement)
/// with [`rewrite`] for its account's model map.
pub fn pairing_for_turn<'a>(counters: &ShardCounters, facts: &PairingFacts<'a>) -> Pairing<'a> {
    let pairing = decide_pairing(facts);
    if pairing.reason != PairingReason::Plain {
        counters.bump_labeled(FAMILY, pairing.reason.as_str());
    }
    pairing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::normalizer::tests::{facts, OUTPUT_NO_PREV, OUTPUT_WITH_PREV};

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn matching_pending_calls_keep_the_id() {
        let parsed = ClientFrame::parse(OUTPUT_WITH_PREV).unwrap();
        let pending = ids(&["c1", "c2"]);
        let p = decide_pairing(&facts(
            &parsed,
            Some("r1"),
            Pending::Known(&pending),
            Pending::Unknown,
        ));
        assert_eq!(p.previous, PreviousId::AsSent);
        assert_eq!(p.reason, PairingReason::Matched);
    }

    #[test]
    fn mismatch_realigns_to_the_last_response_only_when_its_calls_match() {
        let parsed = ClientFrame::parse(OUTPUT_WITH_PREV).unwrap();
        let of_r1 = ids(&["other"]);
        let of_r2 = ids(&["c1"]);
        let p = decide_pairing(&facts(
            &parsed,
            Some("r2"),
            Pending::Known(&of_r1),
            Pending::Known(&of_r2),
        ));
        assert_eq!(p.previous, PreviousId::Set("r2"));
        assert_eq!(p.reason, PairingReason::MismatchRealigned);
        for (last, of_last) in [
            (Some("r2"), Pending::Unknown),
            (Some("r2"), Pending::Known(&of_r1[..])),
            (Some("r1"), Pending::Known(&of_r2[..])),
            (None, Pending::Unknown),
        ] {
            let p = decide_pairing(&facts(&parsed, last, Pending::Known(&of_r1), of_last));
            assert_eq!(p.previous, PreviousId::AsSent, "{last:?}");
            assert_eq!(p.reason, PairingReason::MismatchKept);
        }
    }

    #[test]
    fn unknown_pending_keeps_the_id_by_policy() {
        let parsed = ClientFrame::parse(OUTPUT_WITH_PREV).unwrap();
        let of_r2 = ids(&["c1"]);
        let p = decide_pairing(&facts(
            &parsed,
            Some("r2"),
            Pending::Unknown,
            Pending::Known(&of_r2),
        ));
        assert_eq!(p.previous, PreviousId::AsSent);
        assert_eq!(p.reason, PairingReason::UnknownPendingKept);
    }

    #[test]
    fn store_false_outputs_without_id_get_the_last_response_injected() {
        let parsed = ClientFrame::parse(OUTPUT_NO_PREV).unwrap();
        let matching = ids(&["c1"]);
        let other = ids(&["zz"]);
        let cases = [
            (
                Some("r9"),
                Pending::Known(&matching[..]),
                PreviousId::Set("r9"),
                PairingReason::InjectVerified,
            ),
            (
                Some("r9"),
                Pending::Unknown,
                PreviousId::Set("r9"),
                PairingReason::InjectUnverified,
            ),
            (
                Some("r9"),
                Pending::Known(&other[..]),
                PreviousId::AsSent,
                PairingReason::InjectSkippedMismatch,
            ),
            (
                None,
                Pending::Unknown,
                PreviousId::AsSent,
                PairingReason::InjectNoLast,
            ),
        ];
        for (last, of_last, action, reason) in cases {
            let p = decide_pairing(&facts(&parsed, last, Pending::Unknown, of_last));
            assert_eq!((p.previous, p.reason), (action, reason));
        }
        let stored = ClientFrame::parse(
            br#"{"type":"response.create","input":[{"type":"function_call_output","call_id":"c1"}]}"#,
        )
        .unwrap();
        let p = decide_pairing(&facts(
            &stored,
            Some("r9"),
            Pending::Unknown,
            Pending::Unknown,
        ));
        assert_eq!(
            (p.previous, p.reason),
            (PreviousId::AsSent, PairingReason::StoreEnabled)
        );
    }

    #[test]
    fn self_contained_and_plain_frames_are_left_alone() {
        let own = ClientFrame::parse(
            br#"{"store":false,"input":[{"type":"function_call","call_id":"c1"},{"type":"function_call_output","call_id":"c1"}]}"#,
        )
        .unwrap();
        let p = decide_pairing(&facts(&own, Some("r9"), Pending::Unknown, Pending::Unknown));
        assert_eq!(
            (p.previous, p.reason),
            (PreviousId::AsSent, PairingReason::SelfContained)
        );
        let plain = ClientFrame::parse(br#"{"type":"response.create","input":"hi"}"#).unwrap();
        let p = decide_pairing(&facts(
            &plain,
            Some("r9"),
            Pending::Unknown,
            Pending::Unknown,
        ));
        assert_eq!(p.reason, PairingReason::Plain);
        let chained = ClientFrame::parse(br#"{"previous_response_id":"r1","input":"hi"}"#).unwrap();
        let p = decide_pairing(&facts(
            &chained,
            Some("r9"),
            Pending::Unknown,
            Pending::Unknown,
        ));
        assert_eq!(
            (p.previous, p.reason),
            (PreviousId::AsSent, PairingReason::NoToolOutput)
        );
    }

    #[test]
    fn pending_calls_are_the_tool_calls_of_the_final_output() {
        let ev = br#"{"type":"response.completed","response":{"id":"r1","output":[{"type":"reasoning","id":"rs"},{"type":"function_call","call_id":"c1","name":"f"},{"type":"message","id":"m"},{"type":"custom_tool_call","call_id":"c2"}]}}"#;
        assert_eq!(pending_calls(ev), ids(&["c1", "c2"]));
        let none = br#"{"type":"response.completed","response":{"id":"r1","output":[{"type":"message"}]}}"#;
        assert!(pending_calls(none).is_empty());
        assert!(pending_calls(br#"{"type":"error"}"#).is_empty());
        assert!(pending_calls(b"not json").is_empty());
    }
}
