//! The billing side of one realtime session: what the relay saw per response, turned into one
//! usage record per `response.done` (upstream's counts, or an estimate when it sent none), and
//! into a last estimated record for whatever is left when the session ends, however it ends
//! (either side closed, an error, idle timeout, shutdown, even a panic: the ledger flushes on
//! drop).

use std::time::Instant;

use crate::protocol::realtime::{AudioFormat, RealtimeTokens, ResponseFacts, SessionFacts};
use crate::protocol::Usage;
use crate::runtime;
use crate::usage::{RealtimeUsage, RequestType, UsageRecord};

use super::super::auth::ClientIdentity;
use super::usage_estimate::{estimate, Carried, Standing};

/// Status of the record flushed for a response the session ended in the middle of.
const INTERRUPTED: &str = "interrupted";

/// A response between `response.created` and `response.done`.
struct InFlight {
    id: Option<String>,
    started: Instant,
    input: Carried,
    output: Carried,
}

/// Where a ledger's records go (the shard's usage submission, in the gateway).
pub type RecordSink = Box<dyn Fn(Box<UsageRecord>)>;

/// Who and where a session's records are billed to.
pub struct Billing {
    /// The client.
    pub identity: ClientIdentity,
    /// The upstream account id.
    pub account: String,
    /// The model as the client asked for it.
    pub model: String,
    /// This gateway host.
    pub instance: String,
    /// This shard.
    pub shard: usize,
}

/// One session's accounts.
pub struct Ledger {
    billing: Billing,
    sink: RecordSink,
    /// The gateway's id for the session, until upstream names it in `session.created`.
    session_id: String,
    input_format: AudioFormat,
    output_format: AudioFormat,
    standing: Standing,
    /// Input carried since the last `response.created` (it belongs to the next response).
    pending: Carried,
    in_flight: Option<InFlight>,
    /// Records written so far (numbers synthesized response ids).
    records: u64,
}

impl Ledger {
    /// The ledger of a new session (named `session_id` until upstream names it), whose records
    /// go to `sink`.
    pub fn new(billing: Billing, session_id: String, sink: RecordSink) -> Ledger {
        Ledger {
            billing,
            sink,
            session_id,
            input_format: AudioFormat::default(),
            output_format: AudioFormat::default(),
            standing: Standing::default(),
            pending: Carried::default(),
            in_flight: None,
            records: 0,
        }
    }

    /// Takes what a session event (`session.created|updated` from upstream, `session.update`
    /// from the client) set: formats, instructions, tools, the session id.
    pub fn on_session(&mut self, facts: SessionFacts, from_upstream: bool) {
        if let (Some(id), true) = (facts.id, from_upstream) {
            self.session_id = id;
        }
        if let Some(f) = facts.input_format {
            self.input_format = f;
        }
        if let Some(f) = facts.output_format {
            self.output_format = f;
        }
        if let Some(b) = facts.instructions_bytes {
            self.standing.instructions_bytes = b;
        }
        if let Some(b) = facts.tools_bytes {
            self.standing.tools_bytes = b;
        }
    }

    /// Counts `bytes` of input audio (`input_audio_buffer.append`).
    pub fn input_audio(&mut self, bytes: u64) {
        self.pending.add_audio(bytes, self.input_format);
    }

    /// Counts `bytes` of input text (`conversation.item.create`).
    pub fn input_text(&mut self, bytes: u64) {
        self.pending.add_text(bytes);
    }

    /// Counts `bytes` of output audio of the response in flight.
    pub fn output_audio(&mut self, bytes: u64) {
        let format = self.output_format;
        self.output().add_audio(bytes, format);
    }

    /// Counts `bytes` of output text of the response in flight.
    pub fn output_text(&mut self, bytes: u64) {
        self.output().add_text(bytes);
    }

    fn output(&mut self) -> &mut Carried {
        let pending = &mut self.pending;
        &mut self
            .in_flight
            .get_or_insert_with(|| InFlight {
                id: None,
                started: Instant::now(),
                input: std::mem::take(pending),
                output: Carried::default(),
            })
            .output
    }

    /// A response started: the input carried so far is its input.
    pub fn response_created(&mut self, facts: ResponseFacts) {
        self.in_flight = Some(InFlight {
            id: facts.id,
            started: Instant::now(),
            input: std::mem::take(&mut self.pending),
            output: Carried::default(),
        });
    }

    /// A response ended: one record, with upstream's usage when it sent one, else estimated.
    pub fn response_done(&mut self, facts: ResponseFacts) {
        let flight = self.in_flight.take().unwrap_or_else(|| InFlight {
            id: None,
            started: Instant::now(),
            input: std::mem::take(&mut self.pending),
            output: Carried::default(),
        });
        let id = facts.id.or(flight.id);
        let status = facts.status.unwrap_or_else(|| "completed".into());
        match facts.usage {
            Some(tokens) => self.submit(id, &status, tokens, false, flight.started),
            None => {
                let tokens = estimate(self.standing, flight.input, flight.output);
                self.submit(id, &status, tokens, true, flight.started);
            }
        }
    }

    /// The session is over: what was carried and not billed yet goes into one estimated record.
    pub fn flush(&mut self) {
        let flight = self.in_flight.take();
        if flight.is_none() && self.pending.is_empty() {
            return;
        }
        let (id, started, input, output) = match flight {
            Some(f) => (f.id, f.started, f.input.plus(self.pending), f.output),
            None => (None, Instant::now(), self.pending, Carried::default()),
        };
        self.pending = Carried::default();
        let tokens = estimate(self.standing, input, output);
        self.submit(id, INTERRUPTED, tokens, true, started);
    }

    fn submit(
        &mut self,
        id: Option<String>,
        status: &str,
        tokens: RealtimeTokens,
        estimated: bool,
        started: Instant,
    ) {
        self.records += 1;
        let response_id = id.unwrap_or_else(|| format!("{}-gw{}", self.session_id, self.records));
        let b = &self.billing;
        let record = UsageRecord {
            response_id: response_id.into(),
            ts_ms: runtime::unix_micros() / 1_000,
            group: b.identity.group.clone(),
            key_id: b.identity.key_id.clone(),
            account: b.account.as_str().into(),
            model: b.model.as_str().into(),
            request_type: RequestType::Realtime,
            usage: Usage {
                input_tokens: tokens.input_tokens,
                cached_tokens: tokens.cached_tokens,
                output_tokens: tokens.output_tokens,
                reasoning_tokens: 0,
                total_tokens: tokens.total_tokens,
            },
            ttft_us: None,
            duration_us: started.elapsed().as_micros() as u64,
            attempts: 1,
            status: status.to_string().into(),
            instance: b.instance.as_str().into(),
            shard: b.shard,
            realtime: Some(RealtimeUsage {
                session_id: self.session_id.clone(),
                input_text_tokens: tokens.input_text_tokens,
                input_audio_tokens: tokens.input_audio_tokens,
                output_text_tokens: tokens.output_text_tokens,
                output_audio_tokens: tokens.output_audio_tokens,
                estimated,
            }),
        };
        (self.sink)(Box::new(record));
    }
}

impl Drop for Ledger {
    /// Nothing accrued is lost, however the session ended (a panic included).
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::config::{ClientKey, Secret};
    use crate::shard::auth::ClientAuth;

    fn ledger() -> (Ledger, Rc<RefCell<Vec<UsageRecord>>>) {
        let auth = ClientAuth::new(&[ClientKey {
            id: "k".into(),
            key: Secret::new("sk-k".into()),
            group: "g".into(),
        }]);
        let billing = Billing {
            identity: auth.authenticate(b"sk-k").unwrap().clone(),
            account: "a".into(),
            model: "m".into(),
            instance: "i".into(),
            shard: 0,
        };
        let out = Rc::new(RefCell::new(Vec::new()));
        let sink = out.clone();
        let ledger = Ledger::new(
            billing,
            "rt_1".into(),
            Box::new(move |r| sink.borrow_mut().push(*r)),
        );
        (ledger, out)
    }

    fn reported(id: &str) -> ResponseFacts {
        ResponseFacts {
            id: Some(id.into()),
            status: Some("completed".into()),
            usage: Some(RealtimeTokens {
                input_tokens: 3,
                output_tokens: 4,
                total_tokens: 7,
                ..RealtimeTokens::default()
            }),
        }
    }

    #[test]
    fn reported_usage_is_billed_as_is_and_leaves_nothing_to_flush() {
        let (mut ledger, out) = ledger();
        ledger.on_session(
            SessionFacts {
                id: Some("sess_up".into()),
                ..SessionFacts::default()
            },
            true,
        );
        ledger.input_text(40);
        ledger.response_created(ResponseFacts::default());
        ledger.output_text(400);
        ledger.response_done(reported("resp_1"));
        drop(ledger);
        let out = out.borrow();
        assert_eq!(out.len(), 1, "no estimated record after a reported one");
        let r = &out[0];
        assert_eq!(&*r.response_id, "resp_1");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (3, 4));
        let rt = r.realtime.as_ref().unwrap();
        assert_eq!(rt.session_id, "sess_up");
        assert!(!rt.estimated);
    }

    #[test]
    fn a_session_ending_mid_response_flushes_one_estimated_record() {
        let (mut ledger, out) = ledger();
        ledger.response_created(ResponseFacts {
            id: Some("resp_2".into()),
            ..ResponseFacts::default()
        });
        ledger.output_text(8);
        // Input for the next response arrives while this one runs.
        ledger.input_text(4);
        drop(ledger);
        let out = out.borrow();
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(&*r.response_id, "resp_2");
        assert_eq!(r.status, "interrupted");
        let rt = r.realtime.as_ref().unwrap();
        assert!(rt.estimated);
        assert_eq!((rt.input_text_tokens, rt.output_text_tokens), (1, 2));
    }

    #[test]
    fn a_panicking_session_still_bills_what_it_carried() {
        let (mut ledger, out) = ledger();
        ledger.input_audio(48_000);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = ledger;
            panic!("a session bug");
        }));
        assert!(unwound.is_err());
        let out = out.borrow();
        assert_eq!(out.len(), 1, "the ledger flushed while unwinding");
        let rt = out[0].realtime.as_ref().unwrap();
        assert_eq!(rt.input_audio_tokens, 10, "one second of input audio");
    }

    #[test]
    fn a_session_with_nothing_carried_writes_nothing() {
        let (ledger, out) = ledger();
        drop(ledger);
        assert!(out.borrow().is_empty());
    }
}
