//! Queued faults: what the next handshakes, HTTP requests and turns do instead of the normal path.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Faults to apply to upcoming events, in order; posting a script appends to the queues.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Script {
    /// Each WebSocket handshake pops one: the status to answer instead of 101 (101 accepts).
    pub handshakes: Vec<Rule<u16>>,
    /// Each `POST …/responses` pops one: the status of an OpenAI-style JSON error (200 serves).
    pub http: Vec<Rule<u16>>,
    /// Each turn (WebSocket or HTTP) pops one: directives applied after the in-band ones.
    pub turns: Vec<Rule<String>>,
    /// Persistent: every WebSocket handshake is answered with this status until a reset.
    pub refuse_ws: Option<u16>,
    /// Persistent: upgraded WebSocket connections are never read from (an upstream that stopped
    /// reading) until a reset.
    pub deaf_ws: bool,
    /// Persistent: pings on WebSocket connections between turns go unanswered until a reset.
    pub ignore_pings: bool,
    /// Persistent: every accepted WebSocket handshake carries `x-codex-turn-state` with this
    /// value until a reset.
    pub turn_state: Option<String>,
}

/// One queued value, used for the next `times` events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule<T> {
    /// What the event gets.
    pub value: T,
    /// How many consecutive events get it (default 1).
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// The live form of a [`Script`]: queues popped by the shards.
#[derive(Debug, Default)]
pub struct ScriptQueue {
    handshakes: VecDeque<Rule<u16>>,
    http: VecDeque<Rule<u16>>,
    turns: VecDeque<Rule<String>>,
    refuse_ws: Option<u16>,
    deaf_ws: bool,
    ignore_pings: bool,
    turn_state: Option<String>,
}

impl ScriptQueue {
    /// Appends the rules of `script`; its `refuse_ws`, when set, replaces the current one.
    pub fn append(&mut self, script: Script) {
        self.handshakes.extend(script.handshakes);
        self.http.extend(script.http);
        self.turns.extend(script.turns);
        if script.refuse_ws.is_some() {
            self.refuse_ws = script.refuse_ws;
        }
        self.deaf_ws |= script.deaf_ws;
        self.ignore_pings |= script.ignore_pings;
        if script.turn_state.is_some() {
            self.turn_state = script.turn_state;
        }
    }

    /// Pings between turns go unanswered.
    pub fn ignore_pings(&self) -> bool {
        self.ignore_pings
    }

    /// The `x-codex-turn-state` accepted handshakes carry, if any.
    pub fn turn_state(&self) -> Option<String> {
        self.turn_state.clone()
    }

    /// Upgraded connections are left unread.
    pub fn deaf_ws(&self) -> bool {
        self.deaf_ws
    }

    /// The status the next handshake gets: the persistent refusal, else the next queued rule.
    pub fn next_handshake(&mut self) -> Option<u16> {
        self.refuse_ws.or_else(|| pop(&mut self.handshakes))
    }

    /// The status the next `POST …/responses` gets, if one is queued.
    pub fn next_http(&mut self) -> Option<u16> {
        pop(&mut self.http)
    }

    /// The directives the next turn gets, if any are queued.
    pub fn next_turn(&mut self) -> Option<String> {
        pop(&mut self.turns)
    }
}

/// Takes one use of the front rule, dropping rules whose uses are spent.
fn pop<T: Clone>(queue: &mut VecDeque<Rule<T>>) -> Option<T> {
    while let Some(front) = queue.front_mut() {
        if front.times == 0 {
            queue.pop_front();
            continue;
        }
        front.times -= 1;
        let value = front.value.clone();
        if front.times == 0 {
            queue.pop_front();
        }
        return Some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_used_times_then_dropped() {
        let mut q = ScriptQueue::default();
        q.append(Script {
            handshakes: vec![
                Rule {
                    value: 503,
                    times: 2,
                },
                Rule {
                    value: 404,
                    times: 0,
                },
                Rule {
                    value: 426,
                    times: 1,
                },
            ],
            ..Script::default()
        });
        assert_eq!(q.next_handshake(), Some(503));
        assert_eq!(q.next_handshake(), Some(503));
        assert_eq!(q.next_handshake(), Some(426));
        assert_eq!(q.next_handshake(), None);
    }

    #[test]
    fn refuse_ws_wins_and_persists() {
        let mut q = ScriptQueue::default();
        q.append(Script {
            refuse_ws: Some(426),
            ..Script::default()
        });
        assert_eq!(q.next_handshake(), Some(426));
        assert_eq!(q.next_handshake(), Some(426));
    }
}
