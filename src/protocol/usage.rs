//! Token usage, read from `response.completed` only.

use serde::{Deserialize, Serialize};
use sonic_rs::{JsonValueTrait, LazyValue};

/// Token counts of one turn: what billing is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Prompt tokens served from cache.
    pub cached_tokens: u64,
    /// Completion tokens, reasoning included.
    pub output_tokens: u64,
    /// Completion tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// What upstream reports as the total.
    pub total_tokens: u64,
}

impl Usage {
    /// Reads a usage object (`response.usage`). Returns `None` when it is missing, not an object
    /// or its required counts are not numbers: a wrong record is worse than a counted failure.
    pub(crate) fn from_lazy(v: &LazyValue<'_>) -> Option<Usage> {
        let mut u = Usage::default();
        let mut have_in = false;
        let mut have_out = false;
        let mut have_total = false;
        for item in sonic_rs::to_object_iter(v.as_raw_str()) {
            let (k, val) = item.ok()?;
            match &*k {
                "input_tokens" | "prompt_tokens" => {
                    u.input_tokens = val.as_u64()?;
                    have_in = true;
                }
                "output_tokens" | "completion_tokens" => {
                    u.output_tokens = val.as_u64()?;
                    have_out = true;
                }
                "total_tokens" => {
                    u.total_tokens = val.as_u64()?;
                    have_total = true;
                }
                "input_tokens_details" | "prompt_tokens_details" => {
                    if let Some(c) = val.get("cached_tokens") {
                        u.cached_tokens = c.as_u64().unwrap_or(0);
                    }
                }
                "output_tokens_details" | "completion_tokens_details" => {
                    if let Some(r) = val.get("reasoning_tokens") {
                        u.reasoning_tokens = r.as_u64().unwrap_or(0);
                    }
                }
                _ => {}
            }
        }
        if !(have_in && have_out) {
            return None;
        }
        if !have_total {
            u.total_tokens = u.input_tokens + u.output_tokens;
        }
        Some(u)
    }
}
