//! Warm-ups (`generate: false`) where the transport is HTTP, which rejects them: the gateway
//! answers them itself, and merges the remembered request into a turn chained to one.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use async_tungstenite::tungstenite::Utf8Bytes;
use bytes::Bytes;

use crate::metrics::Hist;
use crate::protocol::{ClientFrame, TerminalKind};

use super::super::counters::bump;
use super::super::http_context;
use super::super::pool::Pool;
use super::super::sink::ClientSink;
use super::finish::{TurnMeta, UsageFacts};
use super::{Driver, TurnEnd, NO_CONNECTION};

impl Driver {
    /// The turn `frame` with the context it chains to merged in, when its `previous_response_id`
    /// is a warm-up the gateway answered or a store=false response carried over HTTP (and the
    /// gateway still remembers it).
    ///
    /// This is the one rewrite outside the normalizer's splice, on purpose: it rebuilds `input`
    /// (the remembered context, then the turn's items), fills fields from the remembered frame
    /// and replaces the gateway-issued id with the warm-up's own, which makes a new frame
    /// that must be parsed again before anything else is decided — the pairing decision reads
    /// the merged frame's previous id and tool outputs, and the normalizer's single splice then
    /// works on it like on any client frame.
    pub(super) fn expand_warmup_chain(
        &self,
        parsed: &ClientFrame<'_>,
        frame: &str,
    ) -> Option<Utf8Bytes> {
        let id = parsed.previous_response_id.as_deref()?;
        let cache = self.shard.warmups.borrow();
        if cache.is_empty() {
            return None;
        }
        let warm = cache.get(id, &self.identity.group)?;
        drop(cache);
        let merged = http_context::merge(&warm, frame)?;
        bump(&self.shard.counters.warmup_chains_merged);
        Some(merged)
    }

    /// Answers a warm-up itself (its transport is HTTP, which rejects `generate`).
    pub(super) async fn answer_warmup<S: ClientSink>(
        &mut self,
        sink: &mut S,
        frame: &Bytes,
        model: &str,
        received: Instant,
        pool: &Rc<Pool>,
    ) -> TurnEnd {
        bump(&self.shard.counters.warmups_answered);
        let id = http_context::new_id();
        tracing::info!(
            key_id = %self.identity.key_id,
            account = %pool.account.config.id,
            response_id = %id,
            "warm-up answered by the gateway (HTTP upstream)"
        );
        self.shard
            .warmups
            .borrow_mut()
            .insert(id.clone(), &self.identity.group, frame.clone());
        let shared: Arc<str> = Arc::from(id.as_str());
        self.remember(&shared, pool, NO_CONNECTION, None);
        for (i, event) in http_context::answer(&id, model).into_iter().enumerate() {
            let et = if i == 0 {
                "response.created"
            } else {
                "response.completed"
            };
            if sink.feed(Utf8Bytes::from(event), et).await.is_err() {
                return TurnEnd::ClientGone;
            }
        }
        if sink.flush().await.is_err() {
            return TurnEnd::ClientGone;
        }
        bump(&self.shard.counters.turns_completed);
        self.shard.counters.bump_labeled("terminal", "completed");
        let duration = received.elapsed();
        self.shard.metrics.record(Hist::TurnDuration, duration);
        let meta = TurnMeta {
            model,
            pool,
            received,
            attempts: 0,
        };
        let facts = UsageFacts {
            kind: TerminalKind::Completed,
            response_id: Some(shared),
            usage: None,
            ttft: Some(duration),
            duration,
        };
        self.record_usage(&meta, facts);
        TurnEnd::Done
    }
}
