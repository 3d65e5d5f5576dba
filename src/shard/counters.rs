//! Per-shard counters: plain cells, touched only by the shard's own thread.

use std::cell::{Cell, RefCell};

macro_rules! shard_counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Events a shard counts. Read by stats snapshots; never shared across threads.
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $($(#[doc = $doc])* pub $name: Cell<u64>,)*
            /// Counters with a label (reason, account, close code), read by
            /// [`ShardCounters::labeled_values`].
            labeled: RefCell<Vec<Family>>,
        }

        impl ShardCounters {
            /// Every plain counter by name, for snapshots.
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.get()),)*]
            }
        }
    };
}

shard_counters! {
    /// Client connections accepted.
    connections,
    /// WebSocket sessions started.
    sessions,
    /// WebSocket sessions currently open.
    sessions_open,
    /// Requests refused before upgrade for a missing or wrong key.
    auth_failures,
    /// Requests refused as malformed (HTTP or WebSocket handshake).
    bad_requests,
    /// Requests for unknown routes.
    not_found,
    /// Sessions refused by the per-key cap.
    session_cap_rejections,
    /// Sessions closed at their next turn because a reload removed or rotated their key.
    sessions_revoked,
    /// Sessions that rested: no frame within `rest_after_ms` of a turn, so their buffers were
    /// given back (a signal tests wait on instead of sleeping past the rest).
    sessions_rested,
    /// Turns started.
    turns,
    /// Turns that ended with `response.completed`.
    turns_completed,
    /// Turns that ended with another terminal event.
    turns_other_terminal,
    /// Turns that ended with an upstream `error` event.
    turns_upstream_error,
    /// Turns that failed on the gateway's side of upstream (dial, I/O, close, timeout).
    turns_failed,
    /// Turns cut short because the client left.
    turns_client_gone,
    /// Client writes that waited past `client_write_timeout_secs` (the client stopped reading).
    client_write_timeouts,
    /// Turns ended early by a new `response.create`.
    turns_preempted,
    /// Turns retried once on a fresh connection after a stale pooled one failed.
    stale_retries,
    /// Client frames answered with an error event (invalid JSON, unknown type).
    client_frame_errors,
    /// Messages over the size limit (either side).
    oversize_messages,
    /// Upstream events relayed to clients.
    events_relayed,
    /// Of those, events written to a client WebSocket as the frame they came in (cut-through;
    /// the rest went through the WebSocket codec or were rewritten).
    events_cut_through,
    /// Client messages read raw, as one plain masked text frame, without the WebSocket codec
    /// (`net/client_read.rs`; the rest went through the codec).
    client_frames_raw,
    /// Sessions that panicked (contained; the shard went on).
    session_panics,
    /// Requests that ended in an error after more than one upstream attempt.
    failed_after_retry,
    /// Messages to the control thread dropped because its queue was full.
    control_queue_drops,
    /// Usage records that found the control queue full and waited in the shard's outbox.
    usage_outbox_holds,
    /// Usage records lost because the control queue and the outbox were both full.
    usage_outbox_drops,
    /// Requests from WebSocket sessions (`response.create` turns).
    requests_ws,
    /// `POST /v1/responses` requests with `"stream": true`.
    requests_stream,
    /// `POST /v1/responses` requests without streaming.
    requests_sync,
    /// Upstream attempts (all transports); attempts per request = attempts / turns.
    attempts,
    /// Requests that failed after using up their retry budget.
    retries_exhausted,
    /// Attempts served by an idle pooled connection (WebSocket or HTTP keep-alive).
    pool_reuses,
    /// Attempts that dialed a new upstream connection.
    pool_dials,
    /// Acquires refused because the account slice's wait queue was full.
    queue_rejections,
    /// Circuit breakers opened.
    breaker_opens,
    /// Request bytes received from clients (frames and bodies).
    bytes_in,
    /// Event bytes written to clients.
    bytes_out,
    /// Warm-ups the gateway answered itself (their transport was HTTP).
    warmups_answered,
    /// Turns chained to a gateway-answered warm-up, sent upstream with its context merged in.
    warmup_chains_merged,
    /// `POST /v1/responses` bodies refused (malformed, too large).
    http_body_errors,
    /// Realtime sessions started (upstream connected, client upgraded).
    realtime_sessions,
    /// Realtime events relayed client → upstream.
    realtime_events_up,
    /// Realtime events relayed upstream → client.
    realtime_events_down,
    /// Realtime usage records with the counts upstream reported in `response.done`.
    realtime_usage_reported,
    /// Realtime usage records the gateway estimated (no usage from upstream, or the session
    /// ended mid-response).
    realtime_usage_estimated,
}

/// Adds one to a counter.
pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Adds `n` to a counter.
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// One family of labeled counters: each label with its count, in the order first bumped.
///
/// A shard has a few dozen families of a handful of labels each (the per-account ones have one
/// label per account), bumped a few times per turn: a scan of short strings that mostly differ
/// in length costs less than hashing the family and the label with SipHash, as the nested
/// `HashMap`s this replaced did on every bump.
#[derive(Debug)]
struct Family {
    name: &'static str,
    labels: Vec<(Box<str>, u64)>,
}

impl ShardCounters {
    /// Adds one to the labeled counter `family{label}` (e.g. `retries{timeout}`). Allocates
    /// only the first time a family or a label is seen.
    pub fn bump_labeled(&self, family: &'static str, label: &str) {
        let mut families = self.labeled.borrow_mut();
        // Callers name families with constants: the same address, compared before the bytes.
        let at = families
            .iter()
            .position(|f| std::ptr::eq(f.name, family) || f.name == family);
        let labels = match at {
            Some(at) => &mut families[at].labels,
            None => {
                families.push(Family {
                    name: family,
                    labels: Vec::new(),
                });
                let last = families.len() - 1;
                &mut families[last].labels
            }
        };
        match labels.iter_mut().find(|(l, _)| **l == *label) {
            Some((_, n)) => *n += 1,
            None => labels.push((label.into(), 1)),
        }
    }

    /// Every labeled counter, for snapshots.
    pub fn labeled_values(&self) -> Vec<(&'static str, String, u64)> {
        self.labeled
            .borrow()
            .iter()
            .flat_map(|f| f.labels.iter().map(|(l, n)| (f.name, l.to_string(), *n)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_every_counter_and_labels_add_up() {
        let c = ShardCounters::default();
        bump(&c.turns);
        bump(&c.turns);
        c.bump_labeled("retries", "timeout");
        c.bump_labeled("retries", "timeout");
        c.bump_labeled("retries", "5xx");
        assert!(c.values().contains(&("turns", 2)));
        let mut l = c.labeled_values();
        l.sort();
        assert_eq!(
            l,
            vec![
                ("retries", "5xx".to_string(), 1),
                ("retries", "timeout".to_string(), 2)
            ]
        );
    }

    #[test]
    fn a_family_is_one_whatever_str_names_it() {
        let c = ShardCounters::default();
        let owned: &'static str = Box::leak(String::from("retries").into_boxed_str());
        c.bump_labeled("retries", "timeout");
        c.bump_labeled(owned, "timeout");
        c.bump_labeled("dials", "acct-a");
        for i in 0..40 {
            c.bump_labeled("dials", &format!("acct-{i}"));
        }
        c.bump_labeled("dials", "acct-a");
        let values = c.labeled_values();
        assert_eq!(values.len(), 1 + 41);
        assert!(values.contains(&("retries", "timeout".to_string(), 2)));
        assert!(values.contains(&("dials", "acct-a".to_string(), 2)));
        assert!(values.contains(&("dials", "acct-39".to_string(), 1)));
    }
}
