//! The shard's draining flag, with a way to wait for it: sessions idle between turns close
//! with 1001 "going away" as soon as a graceful shutdown starts, instead of holding their
//! client until the executor stops.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Whether the shard drains, and who waits for it.
#[derive(Default)]
pub struct Drain {
    draining: Cell<bool>,
    waiters: RefCell<Waiters>,
}

/// The wakers of pending [`Started`] futures, one slot each. Every session waits on one
/// between its frames, so registering and forgetting a waker costs a slot, not a hash.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    /// Stores `waker` in a free slot; its index.
    fn insert(&mut self, waker: Waker) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(waker);
                slot
            }
            None => {
                self.slots.push(Some(waker));
                self.slots.len() - 1
            }
        }
    }

    /// Frees `slot` (its waker, if still there, is dropped).
    fn remove(&mut self, slot: usize) {
        if let Some(waker) = self.slots.get_mut(slot) {
            *waker = None;
            self.free.push(slot);
        }
    }

    /// Wakers still waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

impl Drain {
    /// `true` once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts draining and wakes every waiter.
    pub fn start(&self) {
        self.draining.set(true);
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once draining started. Holds one waker while pending; dropping it forgets it.
    pub fn started(&self) -> Started<'_> {
        Started {
            drain: self,
            slot: None,
        }
    }
}

/// The future of [`Drain::started`].
pub struct Started<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
}

impl Future for Started<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.draining.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.drain.waiters.borrow_mut();
        match self.slot.and_then(|slot| waiters.slots.get_mut(slot)) {
            Some(Some(w)) if w.will_wake(cx.waker()) => {}
            Some(held) => *held = Some(cx.waker().clone()),
            None => {
                let slot = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.drain.waiters.borrow_mut().remove(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn waiters_wake_when_draining_starts_and_leave_nothing_behind() {
        let drain = Drain::default();
        let mut a = Box::pin(drain.started());
        let mut b = Box::pin(drain.started());
        assert!(a.as_mut().now_or_never().is_none());
        assert!(b.as_mut().now_or_never().is_none());
        drop(b);
        assert_eq!(drain.waiters.borrow().len(), 1);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert_eq!(drain.waiters.borrow().len(), 1);
        drain.start();
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(drain.is_draining());
        assert_eq!(drain.waiters.borrow().len(), 0);
    }

    #[test]
    fn a_forgotten_waiters_slot_serves_the_next_and_start_wakes_each_live_one_once() {
        let drain = Drain::default();
        let flags: Vec<_> = (0..3)
            .map(|_| Arc::new(Flag(AtomicBool::new(false))))
            .collect();
        let wakers: Vec<_> = flags.iter().map(|f| Waker::from(f.clone())).collect();
        let mut futures: Vec<_> = (0..2).map(|_| Box::pin(drain.started())).collect();
        for (fut, waker) in futures.iter_mut().zip(&wakers) {
            assert!(fut
                .as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending());
        }
        drop(futures.remove(0));
        let mut third = Box::pin(drain.started());
        assert!(third
            .as_mut()
            .poll(&mut Context::from_waker(&wakers[2]))
            .is_pending());
        assert_eq!(
            drain.waiters.borrow().slots.len(),
            2,
            "the freed slot is reused"
        );
        assert_eq!(drain.waiters.borrow().len(), 2);
        drain.start();
        let woken: Vec<bool> = flags.iter().map(|f| f.0.load(Ordering::SeqCst)).collect();
        assert_eq!(
            woken,
            [false, true, true],
            "the forgotten waiter is not woken"
        );
        drop(third);
        drop(futures);
        assert_eq!(drain.waiters.borrow().len(), 0);
    }
}
