//! One turn, transport-neutral: checks the request against the mock's state, plans the event
//! sequence (with its injected faults), plays it into a sink, and records how it ended.

use std::io;
use std::time::Duration;

use sonic_rs::{json, JsonValueMutTrait, Value};

use super::directives::{Directives, Fault};
use super::errors::ApiError;
use super::events::{self, stamp};
use super::request::CreateRequest;
use super::state::{ConnState, Shared};

/// Size of the delta sent by the `oversize` directive (just over a 16 MiB frame limit).
pub const OVERSIZE_BYTES: usize = 17 << 20;
/// Arguments of the function call a `tool=` directive emits.
const TOOL_ARGUMENTS: &str = r#"{"command":["echo","mock"]}"#;
/// Arguments for Codex's `exec_command` tool (a command line in `cmd`), so that a real Codex
/// runs the call and answers it.
const EXEC_COMMAND_ARGUMENTS: &str = r#"{"cmd":"echo mock"}"#;

/// The arguments of a `tool=NAME` call, in the shape that tool takes.
fn tool_arguments(name: &str) -> &'static str {
    match name {
        "exec_command" => EXEC_COMMAND_ARGUMENTS,
        _ => TOOL_ARGUMENTS,
    }
}

/// Where a turn comes from: the transport decides which state a chain may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket session: the connection's last response is usable too.
    WebSocket,
    /// An HTTP request: only stored responses are usable.
    Http,
}

/// One serialized event, ready to be stamped and sent.
#[derive(Debug)]
pub struct Event {
    /// The event's `type` (the SSE `event:` line).
    pub kind: &'static str,
    /// The event object, without `mock_ts_us`.
    pub json: String,
    /// The first delta of the turn: `ttft` is waited before it.
    pub first_delta: bool,
}

/// How a turn ends once its events are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `response.completed` was the last event.
    Completed,
    /// An `error` event ended the turn; the connection stays usable.
    Failed,
    /// A close frame with this code, then the connection ends.
    Close(u16),
    /// The connection ends without a close frame.
    Drop,
    /// Nothing more is sent for this turn.
    Stall,
    /// A frame with a reserved bit set (WebSocket), then the connection ends once the peer
    /// closes it; over HTTP the connection ends.
    Garbage,
}

/// A turn's events and ending, decided before anything is sent.
#[derive(Debug)]
pub struct Plan {
    /// `resp_c{conn}t{turn}_{random}`.
    pub response_id: String,
    /// `call_id`s of the function calls this response emits.
    pub calls: Vec<String>,
    /// Events in send order, faults included.
    pub events: Vec<Event>,
    /// What happens after the last event.
    pub ending: Ending,
    /// The injected error, with the number of events sent before it.
    pub error: Option<(usize, ApiError)>,
    /// The final response object (the body of a non-streaming HTTP answer).
    pub final_response: String,
    /// Delay before the first delta.
    pub ttft: Duration,
    /// Delay before the first event.
    pub first: Duration,
    /// Delay between events.
    pub delay: Duration,
    /// HTTP only: the status an `http_status=` directive asks for.
    pub http_status: Option<u16>,
    /// Whether the response is kept in the mock-global store.
    pub store: bool,
}

/// Starts a turn on `conn`: counts it, takes its directives (in-band, then scripted), checks
/// `previous_response_id` and tool outputs, and plans its events. A refused turn evicts the
/// connection's last response and returns the error to send.
pub fn begin(
    req: &CreateRequest,
    shared: &Shared,
    conn: &mut ConnState,
    transport: Transport,
) -> Result<Plan, ApiError> {
    let (conn_id, turn) = conn.begin_turn(shared);
    shared.record(|s| {
        match transport {
            Transport::WebSocket => s.ws_turns_total += 1,
            Transport::Http => s.http_turns_total += 1,
        }
        if !req.generate {
            s.generate_false_total += 1;
        }
        if !s.models_seen.contains(&req.model) {
            s.models_seen.insert(req.model.clone());
        }
    });
    let mut directives = Directives::defaults(&shared.cfg);
    directives.apply_in_band(req.mock_directives.as_deref(), &req.input_json);
    if let Some(scripted) = shared.script(|q| q.next_turn()) {
        directives.apply(&scripted);
    }
    if let Err(err) = check(req, shared, conn, transport) {
        conn.last = None;
        return Err(err);
    }
    if let Some(fault) = &directives.fault {
        shared.record_fault(fault.kind());
    }
    if directives.oversize {
        shared.record_fault("oversize");
    }
    Ok(plan(req, &directives, conn_id, turn))
}

/// Records how a played turn ended: a completed response becomes the connection's last (and is
/// stored unless `store: false`); a failed or stalled turn evicts the connection's last.
pub fn finish(plan: &Plan, shared: &Shared, conn: &mut ConnState) {
    match plan.ending {
        Ending::Completed => {
            if plan.store {
                shared.store(&plan.response_id, &plan.calls);
            }
            conn.last = Some((plan.response_id.clone(), plan.calls.clone()));
        }
        Ending::Failed | Ending::Stall => conn.last = None,
        Ending::Close(_) | Ending::Drop | Ending::Garbage => {}
    }
}

/// The chain and tool-output checks.
fn check(
    req: &CreateRequest,
    shared: &Shared,
    conn: &ConnState,
    transport: Transport,
) -> Result<(), ApiError> {
    let previous_calls = match &req.previous_response_id {
        None => Vec::new(),
        Some(prev) => {
            let local = match (&conn.last, transport) {
                (Some((id, calls)), Transport::WebSocket) if id == prev => Some(calls.clone()),
                _ => None,
            };
            match local.or_else(|| shared.stored_calls(prev)) {
                Some(calls) => calls,
                None => {
                    shared.record(|s| s.previous_response_not_found_total += 1);
                    return Err(ApiError::previous_not_found(prev));
                }
            }
        }
    };
    let unmatched = req
        .input_outputs
        .iter()
        .find(|id| !previous_calls.contains(id) && !req.input_calls.contains(id));
    if let Some(call_id) = unmatched {
        shared.record(|s| s.tool_output_not_found_total += 1);
        return Err(ApiError::tool_output_not_found(call_id));
    }
    Ok(())
}

/// Builds a turn's events: the normal sequence, with the oversize frame and the fault placed
/// after `directives.after` events.
pub fn plan(req: &CreateRequest, d: &Directives, conn_id: u64, turn: u64) -> Plan {
    let response_id = format!("resp_c{conn_id}t{turn}_{}", events::random_alnum(6));
    let (normal, calls, final_response, item_id) = normal_events(req, d, &response_id);
    let mut builder = Builder::default();
    let position = d.after.min(normal.len());
    let mut rest = normal.into_iter();
    for (kind, value, first_delta) in rest.by_ref().take(position) {
        builder.push(kind, value, first_delta);
    }
    if d.oversize {
        builder.push(
            "response.output_text.delta",
            json!({
                "type": "response.output_text.delta",
                "item_id": item_id.as_str(),
                "output_index": 0,
                "content_index": 0,
                "delta": "x".repeat(OVERSIZE_BYTES),
            }),
            false,
        );
    }
    let mut error = None;
    let ending = match &d.fault {
        None => Ending::Completed,
        Some(Fault::Error(code)) => {
            error = Some((position, ApiError::for_code(code)));
            Ending::Failed
        }
        Some(Fault::Limit) => {
            error = Some((position, ApiError::connection_limit()));
            Ending::Close(1000)
        }
        Some(Fault::Close(code)) => Ending::Close(*code),
        Some(Fault::Drop) => Ending::Drop,
        Some(Fault::Stall) => Ending::Stall,
        Some(Fault::Garbage) => Ending::Garbage,
    };
    if let Some((_, err)) = &error {
        builder.push_error(err);
    }
    if ending == Ending::Completed {
        for (kind, value, first_delta) in rest {
            builder.push(kind, value, first_delta);
        }
    }
    Plan {
        response_id,
        calls,
        events: builder.events,
        ending,
        error,
        final_response: super::wire_json::to_string(&final_response),
        ttft: d.ttft,
        first: d.first,
        delay: d.delay,
        http_status: d.http_status,
        store: req.store,
    }
}

/// (type, event object without `sequence_number`, is first delta).
type RawEvent = (&'static str, Value, bool);

/// The fault-free events of a turn, the calls it emits, its final response object and the id of
/// its output item.
fn normal_events(
    req: &CreateRequest,
    d: &Directives,
    id: &str,
) -> (Vec<RawEvent>, Vec<String>, Value, String) {
    let created_at = events::now_secs();
    let started = events::response_object(id, created_at, req, "in_progress", Vec::new(), None);
    let mut out: Vec<RawEvent> = vec![(
        "response.created",
        json!({ "type": "response.created", "response": started.clone() }),
        false,
    )];
    if !req.generate {
        let done = events::response_object(
            id,
            created_at,
            req,
            "completed",
            Vec::new(),
            Some(events::usage(0, 0)),
        );
        out.push(completed(&done));
        return (
            out,
            Vec::new(),
            done,
            format!("msg_{}", events::random_alnum(16)),
        );
    }
    out.push((
        "response.in_progress",
        json!({ "type": "response.in_progress", "response": started }),
        false,
    ));
    let (item, output_tokens, calls, item_id) = match &d.tool {
        Some(name) => {
            let (item, calls, item_id) = tool_events(name, &mut out);
            (item, 1, calls, item_id)
        }
        None => {
            let (item, item_id) = text_events(d, &mut out);
            (item, d.deltas as u64, Vec::new(), item_id)
        }
    };
    let done = events::response_object(
        id,
        created_at,
        req,
        "completed",
        vec![item],
        Some(events::usage(req.input_tokens(), output_tokens)),
    );
    out.push(completed(&done));
    (out, calls, done, item_id)
}

fn completed(response: &Value) -> RawEvent {
    (
        "response.completed",
        json!({ "type": "response.completed", "response": response.clone() }),
        false,
    )
}

/// Appends the events of a text message; returns the finished item and its id.
fn text_events(d: &Directives, out: &mut Vec<RawEvent>) -> (Value, String) {
    let item_id = format!("msg_{}", events::random_alnum(16));
    let id = item_id.as_str();
    out.push((
        "response.output_item.added",
        json!({
            "type": "response.output_item.added",
            "output_index": 0,
            "item": events::message_item(id, None),
        }),
        false,
    ));
    out.push((
        "response.content_part.added",
        json!({
            "type": "response.content_part.added",
            "item_id": id,
            "output_index": 0,
            "content_index": 0,
            "part": events::output_text_part(""),
        }),
        false,
    ));
    let mut text = String::with_capacity(d.deltas * d.delta_bytes);
    for i in 0..d.deltas {
        let delta = events::delta_text(i, d.delta_bytes);
        text.push_str(&delta);
        out.push((
            "response.output_text.delta",
            json!({
                "type": "response.output_text.delta",
                "item_id": id,
                "output_index": 0,
                "content_index": 0,
                "delta": delta,
                "logprobs": [],
            }),
            i == 0,
        ));
    }
    out.push((
        "response.output_text.done",
        json!({
            "type": "response.output_text.done",
            "item_id": id,
            "output_index": 0,
            "content_index": 0,
            "text": text.as_str(),
            "logprobs": [],
        }),
        false,
    ));
    out.push((
        "response.content_part.done",
        json!({
            "type": "response.content_part.done",
            "item_id": id,
            "output_index": 0,
            "content_index": 0,
            "part": events::output_text_part(&text),
        }),
        false,
    ));
    let item = events::message_item(id, Some(&text));
    out.push((
        "response.output_item.done",
        json!({ "type": "response.output_item.done", "output_index": 0, "item": item.clone() }),
        false,
    ));
    (item, item_id)
}

/// Appends the events of one function call; returns the finished item, its call ids and its id.
fn tool_events(name: &str, out: &mut Vec<RawEvent>) -> (Value, Vec<String>, String) {
    let item_id = format!("fc_{}", events::random_alnum(16));
    let call_id = format!("call_{}", events::random_alnum(16));
    let id = item_id.as_str();
    out.push((
        "response.output_item.added",
        json!({
            "type": "response.output_item.added",
            "output_index": 0,
            "item": events::function_call_item(id, &call_id, name, None),
        }),
        false,
    ));
    out.push((
        "response.function_call_arguments.delta",
        json!({
            "type": "response.function_call_arguments.delta",
            "item_id": id,
            "output_index": 0,
            "delta": tool_arguments(name),
        }),
        true,
    ));
    out.push((
        "response.function_call_arguments.done",
        json!({
            "type": "response.function_call_arguments.done",
            "item_id": id,
            "output_index": 0,
            "name": name,
            "arguments": tool_arguments(name),
        }),
        false,
    ));
    let item = events::function_call_item(id, &call_id, name, Some(tool_arguments(name)));
    out.push((
        "response.output_item.done",
        json!({ "type": "response.output_item.done", "output_index": 0, "item": item.clone() }),
        false,
    ));
    (item, vec![call_id], item_id)
}

/// Serializes events in order, numbering them.
#[derive(Default)]
struct Builder {
    events: Vec<Event>,
}

impl Builder {
    fn push(&mut self, kind: &'static str, mut value: Value, first_delta: bool) {
        let sequence_number = self.events.len() as u64;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("sequence_number", sequence_number);
        }
        self.events.push(Event {
            kind,
            json: super::wire_json::to_string(&value),
            first_delta,
        });
    }

    fn push_error(&mut self, err: &ApiError) {
        let json = err.event_json(self.events.len() as u64);
        self.events.push(Event {
            kind: "error",
            json,
            first_delta: false,
        });
    }
}

/// Where a turn's events go: WebSocket frames or SSE records.
pub trait EventSink {
    /// Queues one stamped event without flushing.
    async fn feed(&mut self, kind: &str, json: String) -> io::Result<()>;
    /// Sends everything queued.
    async fn flush(&mut self) -> io::Result<()>;
}

/// Sends the plan's events: bursts are fed and flushed once; delays flush first, then sleep.
pub async fn play<K: EventSink>(sink: &mut K, plan: &Plan) -> io::Result<()> {
    for (i, event) in plan.events.iter().enumerate() {
        let mut wait = Duration::ZERO;
        if i > 0 {
            wait += plan.delay;
        } else {
            wait += plan.first;
        }
        if event.first_delta {
            wait += plan.ttft;
        }
        if !wait.is_zero() {
            sink.flush().await?;
            crate::runtime::sleep(wait).await;
        }
        sink.feed(event.kind, stamp(&event.json)).await?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::config::MockConfig;
    use sonic_rs::JsonValueTrait;

    fn request(json: &str) -> CreateRequest {
        CreateRequest::from_http_body(json.as_bytes()).expect("request")
    }

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.kind).collect()
    }

    fn directives(list: &str) -> Directives {
        let mut d = Directives::defaults(&MockConfig::default());
        d.apply(list);
        d
    }

    #[test]
    fn normal_turn_has_the_full_sequence_and_usage() {
        let req = request(r#"{"model":"m","input":"hello there"}"#);
        let plan = plan(&req, &directives("deltas=2,delta_bytes=3"), 4, 2);
        assert!(plan.response_id.starts_with("resp_c4t2_"));
        assert_eq!(
            kinds(&plan),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let last: Value = sonic_rs::from_str(&plan.events[9].json).expect("json");
        assert_eq!(last["sequence_number"].as_u64(), Some(9));
        assert_eq!(
            last["response"]["usage"]["input_tokens"].as_u64(),
            Some(4) // "\"hello there\"" is 13 bytes
        );
        assert_eq!(last["response"]["usage"]["output_tokens"].as_u64(), Some(2));
        assert_eq!(plan.ending, Ending::Completed);
        for event in &plan.events {
            let first_key = format!(r#"{{"type":"{}","#, event.kind);
            assert!(event.json.starts_with(&first_key), "{}", event.json);
        }
        assert!(plan.events[9]
            .json
            .contains(r#""response":{"id":"resp_c4t2_"#));
    }

    #[test]
    fn faults_cut_the_sequence_where_asked() {
        let req = request(r#"{"model":"m"}"#);
        let p = plan(&req, &directives("after=2,error=server_error"), 1, 1);
        assert_eq!(
            kinds(&p),
            ["response.created", "response.in_progress", "error"]
        );
        assert_eq!(p.ending, Ending::Failed);
        let p = plan(&req, &directives("close=1012"), 1, 1);
        assert!(p.events.is_empty());
        assert_eq!(p.ending, Ending::Close(1012));
        let p = plan(&req, &directives("after=99,limit"), 1, 1);
        assert_eq!(p.events.last().map(|e| e.kind), Some("error"));
        assert_eq!(p.ending, Ending::Close(1000));
    }

    #[test]
    fn warm_up_has_two_events_and_zero_usage() {
        let req = request(r#"{"model":"m","generate":false,"input":"x"}"#);
        let p = plan(&req, &directives(""), 1, 1);
        assert_eq!(kinds(&p), ["response.created", "response.completed"]);
        let last: Value = sonic_rs::from_str(&p.events[1].json).expect("json");
        assert_eq!(last["response"]["usage"]["total_tokens"].as_u64(), Some(0));
    }

    #[test]
    fn tool_turn_emits_one_call() {
        let req = request(r#"{"model":"m"}"#);
        let p = plan(&req, &directives("tool=shell"), 1, 1);
        assert_eq!(p.calls.len(), 1);
        assert!(kinds(&p).contains(&"response.function_call_arguments.done"));
    }
}
