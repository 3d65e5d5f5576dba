//! The optional cap on turns started per second.
//!
//! Each executor thread gets an equal share of the overall rate and hands out start slots to its
//! connections one interval apart; a connection sleeps until its slot.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Start slots for one thread's connections.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Cell<Option<Instant>>,
}

impl Pacer {
    /// A pacer for `per_sec` turns per second (must be positive and finite).
    pub fn new(per_sec: f64) -> Pacer {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / per_sec),
            next: Cell::new(None),
        }
    }

    /// Reserves the next start slot at or after `now`.
    pub fn reserve(&self, now: Instant) -> Instant {
        let slot = match self.next.get() {
            Some(next) if next > now => next,
            _ => now,
        };
        self.next.set(Some(slot + self.interval));
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_one_interval_apart_and_never_in_the_past() {
        let p = Pacer::new(10.0);
        let t0 = Instant::now();
        assert_eq!(p.reserve(t0), t0);
        assert_eq!(p.reserve(t0), t0 + Duration::from_millis(100));
        assert_eq!(p.reserve(t0), t0 + Duration::from_millis(200));
        let late = t0 + Duration::from_secs(5);
        assert_eq!(p.reserve(late), late);
    }
}
