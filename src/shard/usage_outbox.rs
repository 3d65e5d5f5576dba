//! Usage records a shard holds while the control queue is full. Records are billing: a control
//! thread that falls behind for a moment (a slow Redis sink, a burst of turns) must not cost
//! records. The shard never waits on the queue; it keeps what did not fit, in order, and offers
//! it again before each new record and on every stats tick. Only when this outbox is full too is
//! a record dropped (counted and logged by the caller).
//!
//! A turn that produced a response sends its record and its sticky state as one message
//! ([`TurnReport`]); when that message cannot go (records held before it, or the queue full),
//! the state is dropped, as a full queue drops any state write, and the record is held alone.

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::control::TurnReport;
use crate::usage::UsageRecord;

/// Records kept per shard while the control queue is full (at a few hundred bytes each, tens of
/// MB at most).
pub const OUTBOX_CAPACITY: usize = 65_536;

/// What became of a submitted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Queued to the control thread.
    Sent,
    /// Kept in the outbox, to be offered again.
    Held,
    /// The outbox is full: the record is lost.
    Dropped,
}

/// A shard's outbox of usage records.
#[derive(Debug)]
pub struct UsageOutbox {
    held: RefCell<VecDeque<Box<UsageRecord>>>,
    capacity: usize,
}

impl UsageOutbox {
    /// An empty outbox holding at most `capacity` records.
    pub fn new(capacity: usize) -> UsageOutbox {
        UsageOutbox {
            held: RefCell::new(VecDeque::new()),
            capacity,
        }
    }

    /// Offers `record` through `offer` (which hands a record back when the queue is full),
    /// after the records already held, so the control thread sees them in turn order.
    pub fn submit(
        &self,
        record: Box<UsageRecord>,
        offer: impl FnMut(Box<UsageRecord>) -> Result<(), Box<UsageRecord>>,
    ) -> Submitted {
        let mut offer = offer;
        if self.flush(&mut offer) > 0 {
            return self.hold(record);
        }
        match offer(record) {
            Ok(()) => Submitted::Sent,
            Err(record) => self.hold(record),
        }
    }

    /// [`UsageOutbox::submit`] of a turn's record travelling with the turn's sticky state
    /// (`offer_turn` queues both, handing the turn back when the queue is full). When the record
    /// cannot go with it, the state is dropped: the second value says so, for the caller to count.
    pub fn submit_turn(
        &self,
        turn: Box<TurnReport>,
        offer_turn: impl FnOnce(Box<TurnReport>) -> Result<(), Box<TurnReport>>,
        offer: impl FnMut(Box<UsageRecord>) -> Result<(), Box<UsageRecord>>,
    ) -> (Submitted, bool) {
        let mut turn = turn;
        if self.flush(offer) == 0 {
            match offer_turn(turn) {
                Ok(()) => return (Submitted::Sent, false),
                Err(back) => turn = back,
            }
        }
        (self.hold(Box::new(turn.usage)), true)
    }

    /// Offers the held records in order until one is handed back; returns how many remain.
    pub fn flush(
        &self,
        mut offer: impl FnMut(Box<UsageRecord>) -> Result<(), Box<UsageRecord>>,
    ) -> usize {
        let mut held = self.held.borrow_mut();
        while let Some(record) = held.pop_front() {
            if let Err(record) = offer(record) {
                held.push_front(record);
                break;
            }
        }
        held.len()
    }

    /// Records held right now.
    pub fn len(&self) -> usize {
        self.held.borrow().len()
    }

    /// `true` when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.borrow().is_empty()
    }

    fn hold(&self, record: Box<UsageRecord>) -> Submitted {
        let mut held = self.held.borrow_mut();
        if held.len() >= self.capacity {
            return Submitted::Dropped;
        }
        held.push_back(record);
        Submitted::Held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Binding, TurnState};

    fn record(n: u64) -> Box<UsageRecord> {
        Box::new(UsageRecord::sample(format!("resp_{n}")))
    }

    #[test]
    fn held_records_go_first_and_in_order() {
        let outbox = UsageOutbox::new(3);
        let mut sent = Vec::new();
        let mut full = |r: Box<UsageRecord>| Err(r);
        assert_eq!(outbox.submit(record(1), &mut full), Submitted::Held);
        assert_eq!(outbox.submit(record(2), &mut full), Submitted::Held);
        assert_eq!(outbox.submit(record(3), &mut full), Submitted::Held);
        assert_eq!(outbox.submit(record(4), &mut full), Submitted::Dropped);
        assert_eq!(outbox.len(), 3);

        // Room for two: the two oldest go, the new record waits behind the third.
        let mut room = 2;
        let mut take = |r: Box<UsageRecord>| {
            if room == 0 {
                return Err(r);
            }
            room -= 1;
            sent.push(r.response_id.to_string());
            Ok(())
        };
        assert_eq!(outbox.submit(record(5), &mut take), Submitted::Held);
        assert_eq!(sent, ["resp_1", "resp_2"]);

        let mut open = |r: Box<UsageRecord>| {
            sent.push(r.response_id.to_string());
            Ok(())
        };
        assert_eq!(outbox.flush(&mut open), 0);
        assert!(outbox.is_empty());
        assert_eq!(outbox.submit(record(6), &mut open), Submitted::Sent);
        assert_eq!(sent, ["resp_1", "resp_2", "resp_3", "resp_5", "resp_6"]);
    }

    fn turn(n: u64) -> Box<TurnReport> {
        Box::new(TurnReport {
            usage: *record(n),
            state: TurnState {
                group: "g".into(),
                response_id: format!("resp_{n}").into(),
                binding: Binding {
                    account: "acct-1".into(),
                    instance: "host-a".into(),
                    shard: 0,
                    connection: n,
                },
                session: None,
                pending: None,
            },
        })
    }

    #[test]
    fn a_turns_record_is_held_and_its_state_dropped_when_the_turn_cannot_go() {
        let outbox = UsageOutbox::new(2);
        let sent = std::cell::RefCell::new(Vec::new());
        let turns_sent = std::cell::RefCell::new(Vec::new());
        let full = |t: Box<TurnReport>| Err(t);
        let no_room = |r: Box<UsageRecord>| Err(r);

        // Nothing held, room: record and state go together.
        let send_turn = |t: Box<TurnReport>| -> Result<(), Box<TurnReport>> {
            turns_sent
                .borrow_mut()
                .push(t.state.response_id.to_string());
            Ok(())
        };
        assert_eq!(
            outbox.submit_turn(turn(1), send_turn, no_room),
            (Submitted::Sent, false)
        );
        // Queue full: the record is held, the state dropped.
        assert_eq!(
            outbox.submit_turn(turn(2), full, no_room),
            (Submitted::Held, true)
        );
        // A record held before it: the turn does not overtake it (record held, state dropped).
        assert_eq!(
            outbox.submit_turn(turn(3), send_turn, no_room),
            (Submitted::Held, true)
        );
        // Outbox full too: the record is lost (the caller counts it).
        assert_eq!(
            outbox.submit_turn(turn(4), full, no_room),
            (Submitted::Dropped, true)
        );
        assert_eq!(*turns_sent.borrow(), ["resp_1"]);

        // Room again: the held records go first, in order, then the next turn whole.
        let open = |r: Box<UsageRecord>| {
            sent.borrow_mut().push(r.response_id.to_string());
            Ok(())
        };
        assert_eq!(
            outbox.submit_turn(turn(5), send_turn, open),
            (Submitted::Sent, false)
        );
        assert_eq!(*sent.borrow(), ["resp_2", "resp_3"]);
        assert_eq!(*turns_sent.borrow(), ["resp_1", "resp_5"]);
        assert!(outbox.is_empty());
    }
}
